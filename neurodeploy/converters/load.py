"""Loading model files safely.

:func:`load_model` detects the format by content (not only by extension):

* ``torch.save`` checkpoints ``{'model': state_dict, ...}`` or bare state dicts, loaded with
  ``weights_only=True`` and put into the module built by ``arch='module:factory'`` (a dotted
  import path or a ``.py`` file) with ``load_state_dict(strict=True)``;
* TorchScript archives (``torch.jit.load``), ``torch.export`` archives (``.pt2``);
* NIR (HDF5; delegated to :func:`neurodeploy.nir_io.from_nir`), ONNX (protobuf);
* a full pickled ``nn.Module`` only with ``trust=True``: without it, a file that needs arbitrary
  objects unpickled is refused (nothing in it is executed).

Truncated or corrupt files raise :class:`LoadError` naming the file and what looks wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import pickle
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .. import ir
from ..artifacts import sha256_file
from ..errors import LoadError, NeurodeployError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "net", "module")
FORMATS = ("checkpoint", "state_dict", "torchscript", "exported", "pickled_module", "nir", "onnx")


@dataclass
class LoadedModel:
    """What :func:`load_model` found. ``graph`` is set for NIR/ONNX inputs, ``module`` for PyTorch."""

    module: nn.Module | None
    graph: ir.Graph | None
    format: str
    extras: dict = field(default_factory=dict)
    sha256: str = ""
    path: str = ""


# -- safe globals for weights_only loading ------------------------------------------------------------

def _safe_globals() -> list:
    """Classes that are harmless to rebuild and common in SFA checkpoints (``args`` Namespace, numpy)."""
    out = [argparse.Namespace]
    try:
        import numpy as np
        out += [np.dtype, np.ndarray]
        for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
            try:
                m = importlib.import_module(mod)
                out += [m.scalar, m._reconstruct]
                break
            except Exception:  # noqa: BLE001
                continue
        dts = getattr(np, "dtypes", None)
        if dts is not None:
            out += [getattr(dts, n) for n in dir(dts) if n.endswith("DType")]
    except ImportError:
        pass
    return out


# -- format detection -------------------------------------------------------------------------------

def _head(path: Path, n: int = 64) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _looks_onnx(head: bytes) -> bool:
    # ModelProto: field 1 (ir_version, varint) first, then producer_name (2), graph (7), opset (8)...
    return len(head) > 3 and head[0] == 0x08 and 1 <= head[1] <= 30 and head[2] in (0x12, 0x1A, 0x22, 0x2A,
                                                                                       0x32, 0x3A, 0x42, 0x52)


def detect_format(path: str | os.PathLike) -> str:
    """'zip', 'hdf5', 'onnx', 'pickle' or 'unknown', by content (extension as a tie-breaker)."""
    p = Path(path)
    head = _head(p)
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if head.startswith(b"PK"):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if _looks_onnx(head) or (p.suffix.lower() == ".onnx" and head[:1] == b"\x08"):
        return "onnx"
    if p.suffix.lower() in (".nir", ".h5", ".hdf5"):
        return "hdf5"
    return "unknown"


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            bad = z.testzip()
    except zipfile.BadZipFile as e:
        raise LoadError(f"{path}: starts like a zip archive (torch.save / TorchScript / torch.export) but the "
                        f"archive is unreadable ({e}): the file is probably truncated or corrupt",
                        fix="copy or download the file again") from e
    except (OSError, EOFError, ValueError) as e:
        raise LoadError(f"{path}: cannot read the zip archive: {e}", fix="copy or download the file again") from e
    if bad is not None:
        raise LoadError(f"{path}: archive member '{bad}' is corrupt (CRC mismatch)",
                        fix="copy or download the file again")
    base = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if any(n.startswith("code/") for n in base) and "constants.pkl" in base:
        return "torchscript"
    if "archive_format" in base or any(n.startswith("models/") for n in base) \
            or any("serialized_exported_program" in n for n in base):
        return "exported"
    if "data.pkl" in base:
        return "torch_save"
    raise LoadError(f"{path}: a zip archive that is neither a torch.save checkpoint, TorchScript nor a "
                    f"torch.export archive (members: {', '.join(sorted(base)[:8])})")


# -- arch factories ------------------------------------------------------------------------------------

def resolve_arch(arch: str):
    """``'pkg.module:factory'`` or ``'path/to/file.py:factory'`` → the factory callable."""
    if ":" not in arch:
        raise LoadError(f"--arch {arch!r} must look like 'module:factory' or 'file.py:factory'",
                        fix="e.g. --arch examples/digits_sfa.py:build_model")
    mod_spec, _, attr = arch.rpartition(":")
    try:
        if mod_spec.endswith(".py") or os.sep in mod_spec or "/" in mod_spec:
            file = Path(mod_spec).expanduser().resolve()
            if not file.is_file():
                raise LoadError(f"--arch: file {mod_spec} does not exist", fix="give the path of the model's .py file")
            name = f"_neurodeploy_arch_{file.stem}_{abs(hash(str(file))) & 0xffffffff:x}"
            if name in sys.modules:
                module = sys.modules[name]
            else:
                spec = importlib.util.spec_from_file_location(name, file)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                sys.path.insert(0, str(file.parent))
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)
                    raise
                finally:
                    with contextlib.suppress(ValueError):
                        sys.path.remove(str(file.parent))
        else:
            module = importlib.import_module(mod_spec)
    except LoadError:
        raise
    except SystemExit as e:
        raise LoadError(f"--arch {arch!r}: importing {mod_spec} called sys.exit({e.code!r})",
                        fix="guard the script part of that file with `if __name__ == '__main__':`") from None
    except Exception as e:  # noqa: BLE001
        raise LoadError(f"--arch {arch!r}: cannot import {mod_spec}: {type(e).__name__}: {e}",
                        fix="check the module path and that its imports are installed") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LoadError(f"--arch {arch!r}: {mod_spec} has no attribute {attr!r}",
                            fix="name a function or nn.Module class that builds the model")
        obj = getattr(obj, part)
    if not callable(obj):
        raise LoadError(f"--arch {arch!r}: {attr} is not callable")
    return obj


def build_arch(arch: str, arch_kwargs: dict | None = None) -> nn.Module:
    factory = resolve_arch(arch)
    try:
        model = factory(**(arch_kwargs or {}))
    except SystemExit as e:  # a factory must not end the process: say which one tried
        raise LoadError(f"--arch {arch!r}: the factory called sys.exit({e.code!r}) instead of returning a model",
                        fix="make the factory return an nn.Module (check --arch-kwargs)") from None
    except Exception as e:  # noqa: BLE001
        raise LoadError(f"--arch {arch!r}: building the model failed: {type(e).__name__}: {e}",
                        fix="check --arch-kwargs") from e
    if not isinstance(model, nn.Module):
        raise LoadError(f"--arch {arch!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _strip_prefix(sd: Mapping, model_keys: set) -> Mapping:
    for prefix in ("module.", "_orig_mod.", "model."):
        if sd and all(k.startswith(prefix) for k in sd) and not any(k.startswith(prefix) for k in model_keys):
            return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_state_dict_strict(model: nn.Module, sd: Mapping, *, where: str = "") -> nn.Module:
    """``load_state_dict(strict=True)`` with an error that lists missing/unexpected/mismatched keys."""
    own = model.state_dict()
    sd = _strip_prefix(sd, set(own))
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        def show(items):
            return ", ".join(items[:10]) + (f" ... ({len(items)} in all)" if len(items) > 10 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {show(mismatched)}")
        raise LoadError(f"{where}the weights do not match the architecture; " + "; ".join(parts),
                        fix="check --arch and --arch-kwargs (depth, widths, number of classes) against the "
                            "model that was trained")
    model.load_state_dict(sd, strict=True)
    return model


# -- torch.save files --------------------------------------------------------------------------------

def _refusal(path: Path, e: Exception) -> LoadError:
    names = []
    with contextlib.suppress(Exception):
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    if not names:
        names = _pickle_globals(path)
    if not names:
        import re
        names = re.findall(r"GLOBAL ([\w.]+)", str(e))
    what = ", ".join(dict.fromkeys(names)) if names else "objects that are not plain tensors"
    return LoadError(
        f"{path}: refused to unpickle {what}: loading it would run code from the file "
        f"(a full pickled model or arbitrary Python objects)",
        fix="if you trust the file, pass --trust (trust=True); better, save model.state_dict() and use --arch")


_HARMLESS_PREFIXES = ("torch._utils.", "torch.storage", "torch.FloatStorage", "collections.OrderedDict",
                      "torch._tensor", "torch.serialization", "torch.Size", "torch.device", "torch.float",
                      "torch.int", "torch.bfloat16", "torch.half", "torch.double", "torch.long", "argparse.Namespace")


def _pickle_globals(path: Path, limit: int = 20) -> list[str]:
    """Names of the globals a (first) pickle in ``path`` would import, read without executing it."""
    import pickletools
    names: list[str] = []
    try:
        with open(path, "rb") as f:
            strings: list[str] = []
            for op, arg, _pos in pickletools.genops(f):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING",
                               "BINSTRING", "STRING"):
                    strings.append(str(arg))
                elif op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif op.name == "STOP":
                    break
    except Exception:  # noqa: BLE001 - a damaged pickle: report what was found so far
        pass
    out = [n for n in dict.fromkeys(names) if not n.startswith(_HARMLESS_PREFIXES)]
    return out[:limit]


def _torch_load(path: Path, trust: bool):
    """torch.load with weights_only=True; with ``trust`` falls back to a full unpickle."""
    try:
        import warnings
        with torch.serialization.safe_globals(_safe_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True), False
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" not in msg and "Unsupported" not in msg:
            raise LoadError(f"{path}: the pickle data is corrupt: {msg.splitlines()[0]}",
                            fix="copy or download the file again") from e
        if "Unsupported global" not in msg and "GLOBAL" not in msg and "Unsupported operand" not in msg \
                and "unsupported" not in msg.lower():
            raise LoadError(f"{path}: cannot read the checkpoint: {msg.splitlines()[0]}") from e
        if not trust:
            raise _refusal(path, e) from None
    except Exception as e:  # noqa: BLE001 - struct.error, EOFError, RuntimeError, ... from a damaged file
        raise LoadError(f"{path}: the file looks truncated or corrupt ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})",
                        fix="copy or download the file again") from e
    # trusted full unpickle
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False), True
    except RuntimeError as e:
        if "magic number" in str(e).lower():
            with open(path, "rb") as f:
                return pickle.load(f), True
        raise LoadError(f"{path}: cannot load the file: {e}") from e
    except Exception as e:  # noqa: BLE001
        raise LoadError(f"{path}: cannot load the file: {type(e).__name__}: {e}") from e


def _from_torch_save(path: Path, obj, arch, arch_kwargs, trusted) -> tuple[nn.Module, str, dict]:
    extras: dict = {}
    if isinstance(obj, nn.Module):
        return obj.eval(), "pickled_module", extras
    if _is_state_dict(obj):
        sd, fmt = obj, "state_dict"
    elif isinstance(obj, Mapping):
        key = next((k for k in STATE_DICT_KEYS if k in obj), None)
        if key is None:
            raise LoadError(f"{path}: a checkpoint dict without model weights (keys: {', '.join(map(str, obj))})",
                            fix="save {'model': model.state_dict(), ...} or the state_dict itself")
        extras = {k: v for k, v in obj.items() if k != key}
        inner = obj[key]
        if isinstance(inner, nn.Module):
            return inner.eval(), "pickled_module", extras
        if not _is_state_dict(inner):
            raise LoadError(f"{path}: checkpoint entry {key!r} is a {type(inner).__name__}, not a state_dict")
        sd, fmt = inner, "checkpoint"
    else:
        raise LoadError(f"{path}: holds a {type(obj).__name__}, not a model, checkpoint or state_dict")
    if not arch:
        raise LoadError(f"{path}: holds only weights (a {'checkpoint' if fmt == 'checkpoint' else 'state_dict'}); "
                        f"the architecture is needed to use them",
                        fix="pass --arch module:factory (e.g. --arch examples/digits_sfa.py:build_model) and "
                            "--arch-kwargs if the factory needs them")
    model = build_arch(arch, arch_kwargs)
    load_state_dict_strict(model, sd, where=f"{path}: ")
    return model.eval(), fmt, extras


# -- public API --------------------------------------------------------------------------------------

def load_model(path, *, arch: str | None = None, arch_kwargs: dict | None = None,
               trust: bool = False) -> LoadedModel:
    """Load a model file of any supported format (see module docstring)."""
    p = Path(path)
    if not p.exists():
        raise LoadError(f"{p}: no such file")
    if p.is_dir():
        raise LoadError(f"{p}: is a folder, not a model file")
    if p.stat().st_size == 0:
        raise LoadError(f"{p}: the file is empty", fix="copy or download the file again")
    digest = sha256_file(p)
    kind = detect_format(p)
    if kind == "hdf5":
        return _load_nir(p, digest)
    if kind == "onnx":
        return _load_onnx(p, digest)
    if kind == "zip":
        zk = _zip_kind(p)
        if zk == "torchscript":
            try:
                module = torch.jit.load(str(p), map_location="cpu")
            except Exception as e:  # noqa: BLE001
                raise LoadError(f"{p}: cannot load the TorchScript archive: {type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}") from e
            return LoadedModel(module.eval(), None, "torchscript", {}, digest, str(p))
        if zk == "exported":
            try:
                ep = torch.export.load(str(p))
            except Exception as e:  # noqa: BLE001
                raise LoadError(f"{p}: cannot load the torch.export archive: {type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}") from e
            ph = [s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
            extras = {"exported_program": ep}
            node = next((n for n in ep.graph.nodes if ph and n.name == ph[0].arg.name), None)
            if node is not None and "val" in node.meta:
                extras["input_shape"] = tuple(int(s) for s in node.meta["val"].shape[1:])
            return LoadedModel(ep, None, "exported", extras, digest, str(p))
    if kind in ("zip", "pickle"):
        obj, trusted = _torch_load(p, trust)
        module, fmt, extras = _from_torch_save(p, obj, arch, arch_kwargs, trusted)
        return LoadedModel(module, None, fmt, extras, digest, str(p))
    head = _head(p, 16)
    raise LoadError(f"{p}: not a recognised model file (first bytes {head!r})",
                    fix="supported: torch.save checkpoint/state_dict (+ --arch), TorchScript, torch.export .pt2, "
                        "NIR (.nir, HDF5), ONNX")


def _load_nir(p: Path, digest: str) -> LoadedModel:
    try:
        import h5py
        with h5py.File(p, "r") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001
        raise LoadError(f"{p}: an HDF5 (NIR) file that cannot be opened ({type(e).__name__}: {e}); it is "
                        f"probably truncated or corrupt", fix="copy or write the file again") from e
    try:
        from ..nir_io import from_nir
    except ImportError as e:
        raise LoadError(f"{p}: NIR support is not available ({e})") from e
    try:
        g = from_nir(p)
    except NeurodeployError:
        raise
    except Exception as e:  # noqa: BLE001
        raise LoadError(f"{p}: cannot read the NIR graph: {type(e).__name__}: {e}") from e
    return LoadedModel(None, g, "nir", {}, digest, str(p))


def _load_onnx(p: Path, digest: str) -> LoadedModel:
    from ..errors import UnsupportedOpError
    from .onnx_import import from_onnx
    try:
        g = from_onnx(p)
    except UnsupportedOpError as e:  # maybe only the head is unsupported: to_graph(until=...) retries
        return LoadedModel(None, None, "onnx", {"deferred_error": e}, digest, str(p))
    return LoadedModel(None, g, "onnx", {}, digest, str(p))
