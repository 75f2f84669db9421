"""Run a neurodeploy Loihi artefact (``network.net`` + ``loihi.json``) in Lava's fixed-point CPU
simulation (``Loihi2SimCfg(select_tag='fixed_pt')``) and return per-layer spike counts and times.

* input: one ``RingBuffer`` source sending each sample's integer input as graded spikes at the
  sample's first timestep (``input_message_bits`` from the sidecar);
* output: one ``RingBuffer`` sink per layer (every NetX block's ``out`` port), so every layer's
  spike raster comes back;
* ``net.stop()`` always runs (``finally``), otherwise Lava's worker processes keep the
  interpreter alive;
* the workers never outlive the run: SIGTERM / Ctrl-C during a run are held back
  (:func:`~neurodeploy.interrupts.deferred_signals`), the workers terminated and the shared memory
  released, then the signal is delivered; and each worker is forked with
  ``PR_SET_PDEATHSIG = SIGKILL``, so that it dies with its parent even after ``kill -9``;
* a failure in a Lava worker (Lava itself says only "1 Exception(s) occurred") is re-raised as a
  :class:`~neurodeploy.errors.NeurodeployError` carrying the workers' own tracebacks.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ...errors import NeurodeployError
from ...interrupts import children_die_with_parent, deferred_signals
from .program import Program
from .simulate import LoihiSimResult

LAVA_FIX = "install/patch Lava with: .venv/bin/python scripts/install_lava.py"


def _import_lava():
    """Import Lava. Lava calls ``multiprocessing.set_start_method('fork')`` at import time, which
    raises "context has already been set" if anything in this interpreter used multiprocessing
    before; a request for the method already in force is therefore made a no-op (and a
    different one is forced: Lava's workers need 'fork')."""
    import multiprocessing as mp
    import sys

    orig = mp.set_start_method
    patched = False
    if ("lava.magma.runtime.message_infrastructure.multiprocessing" not in sys.modules
            and mp.get_start_method(allow_none=True) is not None):
        def tolerant(method, force=False):
            if mp.get_start_method(allow_none=True) == method:
                return None
            return orig(method, force=True)
        mp.set_start_method = tolerant
        patched = True
    try:
        from lava.lib.dl import netx  # noqa: F401
        from lava.magma.core.run_conditions import RunSteps  # noqa: F401
        from lava.magma.core.run_configs import Loihi2SimCfg  # noqa: F401
        from lava.proc import io  # noqa: F401
    except Exception as e:  # ImportError, or the Python 3.11 dataclass error of unpatched Lava
        raise NeurodeployError(f"Lava (lava-nc 0.10.0 / lava-dl 0.6.0) is not usable here: "
                               f"{type(e).__name__}: {e}", fix=LAVA_FIX) from e
    finally:
        if patched:
            mp.set_start_method = orig


import_lava = _import_lava



class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record):
        try:
            self.records.append(record.getMessage())
        except Exception:  # pragma: no cover
            pass


def worker_errors(net, handler: _Capture | None = None) -> list[str]:
    """The tracebacks of Lava's worker processes (what '1 Exception(s) occurred' hides)."""
    texts = []
    try:
        actors = net.runtime._messaging_infrastructure.actors
    except Exception:
        actors = []
    for a in actors:
        exc = getattr(a, "_exception", None)
        if exc is None:
            try:
                if a._pconn.poll():
                    exc = a._pconn.recv()
            except Exception:
                exc = None
        if exc:
            e, tb = exc
            texts.append(tb or repr(e))
    if not texts and handler is not None:
        texts = [r for r in handler.records if "Traceback" in r or "Error" in r]
    return texts


def _poll_actor_errors(net) -> list[str]:
    """Non-blocking: tracebacks that Lava worker processes have sent so far."""
    texts = []
    try:
        actors = net.runtime._messaging_infrastructure.actors
    except Exception:
        return texts
    for a in actors:
        try:
            if getattr(a, "_exception", None) is None and a._pconn.poll():
                a._exception = a._pconn.recv()
        except Exception:
            continue
        exc = getattr(a, "_exception", None)
        if exc:
            e, tb = exc
            texts.append(tb or repr(e))
    return texts


def _kill_workers(net) -> None:
    """Terminate the Lava worker processes this run started (after a worker failed, Lava's
    runtime waits forever for the failed worker's neighbours) and mark the runtime stopped so
    that ``net.stop()`` only releases the shared memory."""
    rt = getattr(net, "runtime", None) or getattr(net, "_runtime", None)
    if rt is None:
        return
    for a in list(getattr(rt._messaging_infrastructure, "actors", [])):
        try:
            if a.is_alive():
                a.terminate()
        except Exception:
            pass
    deadline = time.monotonic() + 2.0
    for a in list(getattr(rt._messaging_infrastructure, "actors", [])):
        try:
            mp_join = type(a).__mro__[1].join  # multiprocessing.Process.join
            mp_join(a, max(0.0, deadline - time.monotonic()))
            if a.is_alive():
                a.kill()
                mp_join(a, 1.0)
            a._is_done = True
        except Exception:
            pass
    rt._is_started = False
    rt._is_running = False


class _Interrupted(BaseException):
    """A SIGTERM / Ctrl-C arrived during a Lava run (delivered again once the workers are gone)."""


def _run_watched(net, T: int, cfg, handler, timeout: float | None, signals: list | None = None) -> None:
    """``net.run`` in a daemon thread, watching the workers for exceptions (Lava itself would
    either print '1 Exception(s) occurred' or deadlock), for a timeout, and for ``signals``
    received (a list that :func:`deferred_signals` fills)."""
    from lava.magma.core.run_conditions import RunSteps

    net.create_runtime(run_cfg=cfg)
    box: dict = {}

    def target():
        try:
            net.run(condition=RunSteps(num_steps=T))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    th = threading.Thread(target=target, name="neurodeploy-lava-run", daemon=True)
    th.start()
    t_end = None if timeout is None else time.monotonic() + timeout
    errs: list[str] = []
    while th.is_alive():
        th.join(0.05)
        if signals:
            raise _Interrupted()
        errs = _poll_actor_errors(net)
        if errs:
            th.join(0.5)  # let Lava's own error path finish if it can
            break
        if t_end is not None and time.monotonic() > t_end:
            break
    if th.is_alive() or errs or "error" in box:
        errs = errs or _poll_actor_errors(net) or worker_errors(net, handler)
        alive = th.is_alive()
        if alive:
            _kill_workers(net)
        e = box.get("error")
        head = (f"{type(e).__name__}: {e}" if e is not None else
                ("a Lava worker process raised" if errs else f"no result after {timeout} s"))
        detail = ("\n--- Lava worker error ---\n" + "\n".join(t.strip()[-4000:] for t in errs)) if errs else ""
        raise NeurodeployError(f"Lava run failed: {head}{detail}",
                               fix="see the worker traceback above; " + LAVA_FIX) from e


def _to_lava_layout(a: np.ndarray) -> np.ndarray:
    """(C,H,W) -> Lava's (W,H,C) (x, y, f); vectors unchanged."""
    return a.transpose(2, 1, 0) if a.ndim == 3 else a


def run_lava(net_path: str | Path, program: Program, x_int, record: bool = True,
             timeout: float | None = 600.0) -> LoihiSimResult:
    """Run the ``.net`` at ``net_path`` (described by ``program``) on integer inputs [B, ...]."""
    _import_lava()
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc import io
    from lava.proc.lif.process import LIF

    from .lava_models import SFA_KEY, PySfaIfModel

    x = np.asarray(x_int).astype(np.int64)
    B, P = x.shape[0], program.period
    T = B * P
    net = netx.hdf5.Network(net_config=str(net_path),
                            input_message_bits=program.input_message_bits)
    if len(net.layers) != len(program.layers):
        raise NeurodeployError(f"{net_path}: NetX built {len(net.layers)} layers, the sidecar "
                               f"describes {len(program.layers)}")
    for spec, blk in zip(program.layers, net.layers):
        blk.neuron.proc_params[SFA_KEY] = {"period": P, "start": spec.window_start, "D": spec.D,
                                           "v_init": spec.v_init, "half_even": spec.half_even,
                                           "graded": program.mode == "graded"}
    if program.mode == "graded":
        # graded spikes between layers: the next synapse must treat its input as a payload
        for prev, blk in zip(program.layers[:-1], net.layers[1:]):
            blk.synapse.num_message_bits.init = np.array([max(1, int(prev.D).bit_length())])
    in_shape = tuple(net.inp.shape)
    data = np.zeros(in_shape + (T,), dtype=np.int32)
    for b in range(B):
        xb = x[b]
        xb = xb.reshape(-1) if len(in_shape) == 1 else _to_lava_layout(xb)
        data[..., b * P] = xb
    src = io.source.RingBuffer(data=data)
    src.s_out.connect(net.inp)
    sinks = []
    for blk in net.layers:
        sink = io.sink.RingBuffer(shape=blk.out.shape, buffer=T)
        blk.out.connect(sink.a_in)
        sinks.append(sink)
    cfg = Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map={LIF: PySfaIfModel})
    handler = _Capture()
    rt_log = logging.getLogger("lava.magma.runtime.runtime")
    old_level = rt_log.level
    rt_log.addHandler(handler)
    rt_log.setLevel(logging.INFO)
    outs = []
    with deferred_signals() as signals, children_die_with_parent():
        try:
            t0 = time.perf_counter()
            _run_watched(net, T, cfg, handler, timeout, signals)
            run_s = time.perf_counter() - t0
            outs = [s.data.get() for s in sinks]
        except BaseException as e:
            if not isinstance(e, Exception):  # interrupted: net.stop() would wait for a running network
                _kill_workers(net)
            raise
        finally:
            try:
                net.stop()
            except Exception:
                pass
            rt_log.removeHandler(handler)
            rt_log.setLevel(old_level)
    counts, rasters = {}, {}
    for spec, arr in zip(program.layers, outs):
        arr = np.moveaxis(np.asarray(arr), -1, 0)          # (T, *lava_shape)
        if arr.ndim == 4:
            arr = arr.transpose(0, 3, 2, 1)                 # (T, C, H, W)
        arr = arr.reshape((B, P) + tuple(spec.out_shape))
        r = torch.as_tensor(arr.astype(np.int64))
        if program.mode != "graded":
            r = r != 0
        counts[spec.name] = r.sum(dim=1).to(torch.int64)
        if record:
            rasters[spec.name] = r
    res = LoihiSimResult(counts=counts, spikes=rasters, period=P, runtime="lava",
                         mode=program.mode)
    res.run_seconds = run_s
    return res
