"""verify / profile at dataset scale: batch by batch (constant memory), optionally on Ray workers.

The quantised program is built once (scales from ``--calibration``, else from the first samples of
``--data``: up to ``datasets.CALIBRATION_VALUES`` numbers, i.e. all of any dataset that fits in
memory). Each shard is verified / profiled on its own and the per-shard reports are merged exactly
(:mod:`neurodeploy.report_merge`), so the report equals the in-memory run's.
"""

from __future__ import annotations

import hashlib

from . import datasets
from .distributed import Runner, run_shards
from .report_merge import merge_profile, merge_verify, shift_verify


def calibration_head(source: datasets.DataSource, input_shape, limit=None):
    """The first samples of ``source`` (calibration when no --calibration is given) and a note
    when they are not the whole (limited) dataset."""
    head = source.head(input_shape=input_shape, limit=limit)
    total = source.n_samples if limit is None else min(int(limit), source.n_samples)
    extra = "" if len(head.x) >= total else f" (its first {len(head.x)} of {total} samples)"
    return head, extra


def program_key(*parts) -> str:
    """A digest of what decides a shard's result (quantised graph, settings), for the shard cache:
    canonical (by value; pickle bytes depend on which objects happen to be shared)."""
    h = hashlib.sha256()
    for part in parts:
        _digest(part, h)
    return h.hexdigest()


def _digest(obj, h) -> None:
    import dataclasses

    import numpy as np

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(f"<{type(obj).__qualname__}".encode())
        for f in dataclasses.fields(obj):
            h.update(f.name.encode())
            _digest(getattr(obj, f.name), h)
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=repr):
            _digest(k, h)
            _digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(b"[" if isinstance(obj, list) else b"(")
        for v in obj:
            _digest(v, h)
    elif isinstance(obj, np.ndarray) or hasattr(obj, "detach"):
        a = np.ascontiguousarray(obj.detach().cpu().numpy() if hasattr(obj, "detach") else obj)
        h.update(f"<{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    else:
        h.update(f"<{type(obj).__name__}:{obj!r}".encode())


def _verify_task(program, shard):
    from .api import verify_prepared

    prepared, quantized, options = program
    dataset = shard.read(prepared.options["input_shape"])
    return verify_prepared(prepared, quantized, dataset, **options)


def _profile_task(program, shard):
    from .api import run_profile

    quantized, energy, input_shape = program
    return run_profile(quantized, shard.read(input_shape).x, energy=energy)


def stream_verify(prepared, quantized, source, *, limit=None, batch_size=datasets.DEFAULT_BATCH,
                  runner: Runner | None = None, **options):
    """``api.verify_prepared`` over every batch of ``source``, merged into one report. The Speck
    ladder and the Lava comparison are not per-sample sums: they run on one batch per file."""
    if options.get("target") == "speck" or options.get("runtime") == "lava":
        batch_size = source.n_samples
    shards = source.shards(batch_size, limit)
    key = program_key("verify", quantized.nodes, quantized.metadata, sorted(options.items()),
                      prepared.loaded.path if hasattr(prepared.loaded, "path") else "")
    return run_shards(_verify_task, (prepared, quantized, options), shards,
                      lambda acc, rep, shard: merge_verify(acc, shift_verify(rep, shard.offset)),
                      runner=runner, program_key=key)


def stream_profile(quantized, source, *, input_shape, energy=None, limit=None,
                   batch_size=datasets.DEFAULT_BATCH, runner: Runner | None = None):
    """``api.run_profile`` over every batch of ``source``, merged into one report."""
    shards = source.shards(batch_size, limit)
    key = program_key("profile", quantized.nodes, quantized.metadata, sorted((energy or {}).items()))
    return run_shards(_profile_task, (quantized, energy, input_shape), shards,
                      lambda acc, rep, shard: merge_profile(acc, rep, quantized),
                      runner=runner, program_key=key)
