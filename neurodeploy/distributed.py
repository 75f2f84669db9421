"""Run a per-shard task over a dataset: in this process, or on Ray workers; merge in sample order.

:func:`run_shards` applies ``task(program, shard)`` to every :class:`~neurodeploy.datasets.ShardSpec`
and folds the results with ``merge`` in shard order (so the report never depends on which worker
finished first). With ``workers`` / ``address`` the tasks run on Ray: the program is put in the
object store once (``ray.put``) and every task reads its own shard from disk; a task whose worker
dies is retried (``max_retries``); at most ``2·workers`` shards are in flight, so memory stays flat.
With ``cache_dir`` each shard's result is written there under a hash of the program and the
shard's content, and ``resume`` skips shards whose result is already there.

Ray is an optional extra (``pip install 'neurodeploy[ray]'``); nothing here imports it otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import NeurodeployError

RAY_FIX = "install the extra: pip install 'neurodeploy[ray]' (or make install), or run without --workers"
MAX_RETRIES = 3
# one thread per worker; idle OpenMP threads sleep instead of spinning on a core another worker needs
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


@dataclass
class Runner:
    workers: int | None = None      # start a local Ray runtime with this many workers
    address: str | None = None      # join this Ray cluster ('auto', 'HOST:PORT', 'ray://...')
    cache_dir: str | Path | None = None
    resume: bool = False
    progress: bool = False

    @property
    def uses_ray(self) -> bool:
        return bool(self.workers) or bool(self.address)


def import_ray():
    try:
        import ray
    except ImportError:
        raise NeurodeployError("--workers / --ray-address need Ray, which is not installed", fix=RAY_FIX) from None
    return ray


def run_shards(task, program, shards, merge, *, runner: Runner | None = None, program_key: str = ""):
    """``merge(acc, result, shard)`` over ``task(program, shard)`` for every shard, in shard order."""
    runner = runner or Runner()
    if runner.resume and not runner.cache_dir:
        raise NeurodeployError("--resume needs a folder for the per-shard results", fix="pass --out DIR")
    cache = _Cache(runner.cache_dir, program_key) if runner.cache_dir else None
    bar = _progress(sum(len(s) for s in shards), runner.progress)
    acc = None
    try:
        todo = []
        results = {}
        for i, shard in enumerate(shards):
            hit = cache.load(shard) if cache and runner.resume else None
            if hit is not None:
                results[i] = hit
            else:
                todo.append(i)
        if results and runner.progress:
            import sys

            print(f"resume: {len(results)} of {len(shards)} shards already in {runner.cache_dir}", file=sys.stderr)
        done_iter = _ray_results(task, program, shards, todo, runner) if runner.uses_ray else \
            ((i, task(program, shards[i])) for i in todo)
        next_i = 0
        for i, result in _with_cached(done_iter, results):
            if cache and i in todo:
                cache.store(shards[i], result)
            results[i] = result
            bar.update(len(shards[i]))
            while next_i in results:  # fold in shard order as soon as the next one is there
                acc = merge(acc, results.pop(next_i), shards[next_i])
                next_i += 1
    finally:
        bar.close()
    return acc


def _with_cached(done_iter, cached: dict):
    yield from list(cached.items())
    yield from done_iter


def _ray_results(task, program, shards, todo, runner: Runner):
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        kwargs = {"address": runner.address} if runner.address else {"num_cpus": int(runner.workers)}
        try:
            ray.init(**kwargs, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                     runtime_env={"env_vars": WORKER_ENV})
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise NeurodeployError(f"cannot start or join Ray ({runner.address or 'local'}): {e}",
                                   fix="check --ray-address (ray status on the head node prints it)") from None
    try:
        window = 2 * max(int(runner.workers or ray.cluster_resources().get("CPU", 1)), 1)
        _pickle_arch_files_by_value(ray)
        ref = ray.put(program)
        remote = ray.remote(max_retries=MAX_RETRIES, num_cpus=1)(_ray_task)
        pending = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < window:
                i = queue.pop(0)
                pending[remote.remote(task, [ref], shards[i])] = i  # boxed: the worker resolves it once
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            yield i, _ray_get(ray, ready[0])
    finally:
        if started:
            ray.shutdown()


def _pickle_arch_files_by_value(ray) -> None:
    """A model class from an ``--arch file.py`` lives in a module workers cannot import by name:
    ship its code with the program instead; likewise the modules it imported from its own folder
    (e.g. ``digits_chain.py`` importing ``digits_sfa``), which the loader put on the driver's path only."""
    import sys

    arch = {name: m for name, m in list(sys.modules.items()) if name.startswith("_neurodeploy_arch_") and m is not None}
    folders = {Path(m.__file__).resolve().parent for m in arch.values() if getattr(m, "__file__", None)}
    siblings = {name: m for name, m in list(sys.modules.items())
                if m is not None and getattr(m, "__file__", None) and name not in arch and "." not in name
                and Path(m.__file__).resolve().parent in folders}
    for module in [*arch.values(), *siblings.values()]:
        ray.cloudpickle.register_pickle_by_value(module)


_PROGRAMS: dict = {}


def _ray_task(task, program_box, shard):
    """On a worker: the program is unpickled once per worker process (models, graphs), not per shard."""
    import ray
    import torch

    torch.set_num_threads(1)  # one core per worker: N workers use N cores
    ref = program_box[0]
    if ref.hex() not in _PROGRAMS:
        _PROGRAMS.clear()
        _PROGRAMS[ref.hex()] = ray.get(ref)
    return task(_PROGRAMS[ref.hex()], shard)


def _ray_get(ray, ref):
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, NeurodeployError):
            raise cause from None
        raise


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="img", unit_scale=True, dynamic_ncols=True, smoothing=0.1, leave=False,
                disable=None)  # None: only on a terminal (images/s and ETA)


class _NoBar:
    def update(self, _n):
        pass

    def close(self):
        pass


class _Cache:
    """Per-shard results as JSON files named by sha256(program key, shard content)."""

    def __init__(self, folder, program_key: str):
        self.folder = Path(folder) / "shards"
        self.program_key = program_key
        self.keys: dict = {}    # shard -> its file name, computed once per run
        self.digests: dict = {}  # file digests of this run (the batches of one .npz hash it once)

    def _path(self, shard) -> Path:
        if shard not in self.keys:
            content = shard.content_hash(self.digests)
            self.keys[shard] = hashlib.sha256(f"{self.program_key}|{content}".encode()).hexdigest()[:32]
        return self.folder / f"{self.keys[shard]}.json"

    def load(self, shard):
        from .report_codec import decode

        path = self._path(shard)
        if not path.exists():
            return None
        try:
            return decode(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            return None  # a damaged cache entry is recomputed

    def store(self, shard, result) -> None:
        from .report_codec import encode

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(shard)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(encode(result)))
        os.replace(tmp, path)
