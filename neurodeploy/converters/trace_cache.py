"""Cache of traced graphs: compiling a model again skips ``torch.export``.

Tracing costs more than the rest of a small compile together (importing ``torch.export`` pulls in
dynamo and sympy, ~1.5 s, and the trace itself ~0.5-1 s). The graph :func:`from_torch` builds is a
pure function of what this key covers, so a second compile reads it back instead:

* the model's parameters and buffers (names, dtypes, shapes, bytes), its module tree (paths,
  classes, train/eval mode, plain attributes such as ``max_value = 4``);
* the source files of the code it runs that is neither torch, numpy, the standard library nor
  neurodeploy: the classes of its modules and everything reachable from their methods (functions,
  autograd Functions, modules they name, recursively), plus the values of the globals, class
  attributes, defaults and closure cells they read (plain data and tensors by content, settings
  objects such as an ``argparse.Namespace`` or a config instance by their attributes);
* the input shape, ``until``, the spike settings, the torch / numpy / Python versions and the
  sha256 of the neurodeploy sources the trace runs (torch_export.py, this file and every
  neurodeploy module they import: a change to the converter invalidates every entry).

A model whose code cannot be pinned down this way is traced every time: forward hooks, a
``forward`` patched onto an instance, code without a source file, objects it cannot describe.

Entries are IR files (JSON + ``.npy`` in a zip, no pickles) written atomically, and a graph is
stored only if it reads back identical (same node and key order, same types). ``NEURODEPLOY_CACHE=0``
turns the cache off; ``NEURODEPLOY_CACHE_DIR`` moves it (default ``$XDG_CACHE_HOME/neurodeploy``
or ``~/.cache/neurodeploy``); at most ``MAX_ENTRIES`` entries are kept (least recently used go
first) and deleting the folder is always safe.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import io
import json
import os
import platform
import re
import sys
import sysconfig
import types
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import ir

CACHE_FORMAT = 1
MAX_SOURCE_FILES = 400
MAX_ENTRIES = 32  # least recently used entries beyond this are removed (only our own files)
_PLAIN = (bool, int, float, str, bytes, type(None))
_LIBRARY_PREFIXES = ("torch", "numpy", "neurodeploy", "builtins", "typing", "functools", "abc", "collections")
_ENTRY = re.compile(r"[0-9a-f]{64}\.ir\.npz")


class _Uncacheable(Exception):
    """The model's behaviour cannot be pinned down by the key; trace it."""


def cache_dir() -> Path | None:
    """The cache folder, or None when ``NEURODEPLOY_CACHE`` turns caching off."""
    if os.environ.get("NEURODEPLOY_CACHE", "1").strip().lower() in ("0", "off", "no", "false"):
        return None
    explicit = os.environ.get("NEURODEPLOY_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no home folder: no cache
            return None
    return Path(base) / "neurodeploy"


def cached_from_torch(module, input_shape, *, until=None, spike=None) -> ir.Graph:
    """:func:`from_torch`, read from the cache when the same model was traced before."""
    import torch

    from .torch_export import from_torch

    folder = cache_dir()
    key = None
    if folder is not None and isinstance(module, torch.nn.Module) and not isinstance(module, torch.jit.ScriptModule):
        module.eval()  # as from_torch does before tracing (a hit must leave the module as a trace does)
        try:
            key = trace_key(module, input_shape, until, spike)
        except Exception:  # noqa: BLE001 - a model the key cannot describe is traced as usual
            key = None
    if key is None:
        return from_torch(module, input_shape, until=until, spike=spike)
    path = folder / "trace" / f"{key}.ir.npz"
    graph = _read(path)
    if graph is not None:
        return graph
    graph = from_torch(module, input_shape, until=until, spike=spike)
    _store(graph, path)
    return graph


# -- the key -----------------------------------------------------------------------------------------

def trace_key(module, input_shape, until, spike) -> str | None:
    """sha256 of everything that decides the traced graph, or None when that cannot be known."""
    import torch

    if not isinstance(module, torch.nn.Module) or isinstance(module, torch.jit.ScriptModule):
        return None
    walker = _CodeWalker()
    try:
        header = {"format": CACHE_FORMAT, "neurodeploy": _package_digest(), "torch": torch.__version__,
                  "numpy": np.__version__, "python": platform.python_version(),
                  "input_shape": [int(s) for s in input_shape], "until": until,
                  "spike": walker.describe(spike, "spike"), "grad": torch.is_grad_enabled(),
                  "dtype": str(torch.get_default_dtype()), "hooks": _global_hooks()}
        tree = _module_tree(module, walker)
        tensors = _tensor_digest(module)
    except _Uncacheable:
        return None
    body = json.dumps({"header": header, "tree": tree, "tensors": tensors, "code": sorted(walker.files.items()),
                       "values": walker.values}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _package_digest() -> str:
    """sha256 of the neurodeploy sources the traced graph depends on: torch_export.py, this file,
    and every neurodeploy module they import (relative imports, at any depth, followed with ast)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in _trace_sources(root):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


_RELATIVE_IMPORT = re.compile(r"^[ \t]*from[ \t]+(\.+)([\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#]+)", re.M)


def _trace_sources(root: Path) -> list[Path]:
    todo = [root / "converters" / "torch_export.py", Path(__file__).resolve()]
    found: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in found or not path.is_file():
            continue
        found.add(path)
        for dots, module, names in _RELATIVE_IMPORT.findall(path.read_text()):
            base = path.parent
            for _ in range(len(dots) - 1):
                base = base.parent
            target = base.joinpath(*module.split(".")) if module else base
            todo += [target.with_suffix(".py"), target / "__init__.py"]
            todo += [target / f"{n.split()[0]}.py" for n in names.strip("()").replace("\n", " ").split(",")
                     if n.strip()]  # "from .. import ir"
    return sorted(p for p in found if root in p.parents)


def _global_hooks() -> int:
    import torch.nn.modules.module as mm

    n = sum(len(getattr(mm, d, None) or {}) for d in ("_global_forward_hooks", "_global_forward_pre_hooks"))
    if n:
        raise _Uncacheable("global module hooks")
    return n


def _module_tree(module, walker: "_CodeWalker") -> list:
    out = []
    for name, m in module.named_modules(remove_duplicate=False):
        if "forward" in vars(m) or m._forward_hooks or m._forward_pre_hooks:
            raise _Uncacheable(f"module {name!r} has hooks or a patched forward")
        walker.visit(type(m))
        attrs = {k: walker.describe(v, f"{name}.{k}") for k, v in vars(m).items() if not k.startswith("_")}
        out.append([name, _module_id(type(m)), type(m).__qualname__, attrs])
    return out


def _is_plain_tree(v) -> bool:
    if isinstance(v, _PLAIN):
        return True
    if isinstance(v, (list, tuple)):
        return all(_is_plain_tree(x) for x in v)
    if isinstance(v, dict):
        return all(_is_plain_tree(k) and _is_plain_tree(x) for k, x in v.items())
    return False


def _tensor_digest(module) -> list:
    seen: dict[int, str] = {}
    out = []
    for kind, named in (("param", module.named_parameters(remove_duplicate=False)),
                        ("buffer", module.named_buffers(remove_duplicate=False))):
        for name, t in named:
            if id(t) in seen:  # shared weights: the sharing itself is part of the model
                out.append([kind, name, "same", seen[id(t)]])
                continue
            seen[id(t)] = name
            out.append([kind, name, _tensor_sha(t), bool(t.requires_grad)])
    return out


def _tensor_sha(t) -> list:
    import torch

    if t.device.type == "meta" or t.layout != torch.strided:
        raise _Uncacheable("a tensor that cannot be read")
    a = t.detach().cpu().contiguous()
    raw = a.view(-1).view(torch.uint8).numpy().tobytes() if a.numel() else b""
    return [str(a.dtype), list(a.shape), hashlib.sha256(raw).hexdigest()]


# -- the code the model runs -------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _library_roots() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(standard library folders, folders of the packages whose versions are in the key)."""
    import torch

    stdlib = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")}
    packages = {Path(m.__file__).parent for m in (torch, np)} | {Path(__file__).resolve().parents[1]}
    return (tuple(str(Path(r).resolve()) + os.sep for r in stdlib if r),
            tuple(str(Path(r).resolve()) + os.sep for r in packages))


def _library_file(path: str) -> bool:
    resolved = str(Path(path).resolve())
    stdlib, packages = _library_roots()
    if resolved.startswith(packages):
        return True
    return any(resolved.startswith(r) and "-packages" not in resolved[len(r):] for r in stdlib)


def _code_file(obj) -> str | None:
    """The file the Python code of a function or class was compiled from (``<string>`` for exec)."""
    if isinstance(obj, (staticmethod, classmethod, types.MethodType)):
        obj = obj.__func__
    if isinstance(obj, types.FunctionType):
        return obj.__code__.co_filename
    if isinstance(obj, type):
        for v in vars(obj).values():
            f = v.fget if isinstance(v, property) else getattr(v, "__func__", v)
            if isinstance(f, types.FunctionType):
                return f.__code__.co_filename
    return None


def _module_name(obj) -> str:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    name = getattr(obj, "__module__", None)
    return name if isinstance(name, str) else ""


def _module_id(obj) -> str:
    """The module's file (stable across runs: an --arch file's module name has a hash of the path in
    it, and str hashes change from one process to the next), else its name."""
    name = _module_name(obj)
    f = getattr(sys.modules.get(name), "__file__", None)
    return str(Path(f).resolve()) if f else name


def _is_library(obj) -> bool:
    """torch, numpy, neurodeploy (covered by versions / the package digest) and the standard library."""
    code_file = _code_file(obj)
    if code_file is not None:
        return _library_file(code_file)
    modname = _module_name(obj)
    if modname.split(".")[0] in _LIBRARY_PREFIXES or modname in sys.builtin_module_names:
        return True
    mod = obj if isinstance(obj, types.ModuleType) else sys.modules.get(modname)
    f = getattr(mod, "__file__", None)
    if not f:
        return False
    return _library_file(f)


_CODE = (type, types.FunctionType, types.MethodType, types.ModuleType, staticmethod, classmethod, property)


class _CodeWalker:
    """Collects the source files (and the plain values) of the non-library code a model can run."""

    def __init__(self):
        self.files: dict[str, str] = {}
        self.values: dict[str, object] = {}
        self.seen: set[int] = set()

    def describe(self, value, where: str, depth: int = 0):
        """A JSON-able description of a value code reads: plain data and tensors by content, code is
        walked, other objects by their attributes (a few levels deep), else the model is refused."""
        import torch

        if depth > 6:
            raise _Uncacheable(f"{where}: nested too deeply")
        d = depth + 1
        if isinstance(value, _PLAIN):
            return value if not isinstance(value, bytes) else {"bytes": value.hex()}
        if isinstance(value, (list, tuple, set, frozenset)):
            items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
            return [type(value).__name__] + [self.describe(v, where, d) for v in items]
        if isinstance(value, dict):
            return {"dict": [[self.describe(k, where, d), self.describe(v, where, d)] for k, v in value.items()]}
        if isinstance(value, torch.Tensor):
            return {"tensor": _tensor_sha(value)}
        if isinstance(value, np.ndarray):
            return {"array": [str(value.dtype), list(value.shape),
                              hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()]}
        if isinstance(value, (np.generic, torch.dtype, torch.device, torch.Size)):
            return {"scalar": repr(value)}
        if isinstance(value, functools.partial):
            return {"partial": [self.describe(value.func, where, d), self.describe(value.args, where, d),
                                self.describe(value.keywords, where, d)]}
        if isinstance(value, torch.nn.Module):  # e.g. a module kept in a global: its weights count too
            self.visit(type(value))
            return {"module": [_module_id(type(value)), type(value).__qualname__, _tensor_digest(value)]}
        if isinstance(value, _CODE) or (callable(value) and _is_library(value)):
            self.visit(value)
            return {"code": [_module_id(value), getattr(value, "__qualname__", type(value).__qualname__)]}
        state = getattr(value, "__dict__", None)
        if _is_library(value):  # e.g. argparse.Namespace of settings: by its plain attributes
            plain = {k: v for k, v in (state or {}).items() if not k.startswith("_") and _is_plain_tree(v)}
            return {"object": [type(value).__module__, type(value).__qualname__, self.describe(plain, where, d)]}
        if isinstance(state, dict):  # an instance of user code (a config object): class and attributes
            self.visit(type(value))
            return {"instance": [_module_id(type(value)), type(value).__qualname__, self.describe(state, where, d)]}
        raise _Uncacheable(f"{where}: a {type(value).__qualname__} object")

    def visit(self, obj) -> None:
        if isinstance(obj, property):
            for f in (obj.fget, obj.fset, obj.fdel):
                if f is not None:
                    self.visit(f)
            return
        if isinstance(obj, (types.MethodType, staticmethod, classmethod)):
            obj = obj.__func__
        if id(obj) in self.seen or _is_library(obj):
            return
        self.seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            self._file(obj)
            if "site-packages" in str(getattr(obj, "__file__", "")):
                return  # an installed package: its own files are hashed as its code is reached
            for k, v in list(vars(obj).items()):
                if isinstance(v, _CODE) and not k.startswith("__"):
                    self.visit(v)
        elif isinstance(obj, type):
            self._file(obj)
            for base in obj.__mro__[1:]:
                self.visit(base)
            for k, v in vars(obj).items():
                if not k.startswith("__") or k in ("__call__", "__init__"):
                    self.values[f"{_module_id(obj)}:{obj.__qualname__}.{k}"] = self.describe(v, k)
        elif isinstance(obj, types.FunctionType):
            self._function(obj)

    def _file(self, obj) -> None:
        try:
            path = inspect.getsourcefile(obj) or inspect.getfile(obj)
        except (TypeError, OSError):
            raise _Uncacheable(f"no source file for {obj!r}") from None
        if not path or not os.path.isfile(path):
            raise _Uncacheable(f"no source file for {obj!r}")
        path = str(Path(path).resolve())
        if path in self.files:
            return
        if len(self.files) >= MAX_SOURCE_FILES:
            raise _Uncacheable("too much code to fingerprint")
        self.files[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        mod = obj if isinstance(obj, types.ModuleType) else sys.modules.get(_module_name(obj))
        if mod is not None:
            self.visit(mod)

    def _function(self, fn: types.FunctionType) -> None:
        self._file(fn)
        where = f"{_module_id(fn)}:{fn.__qualname__}"
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            if name == "__class__":
                continue
            try:
                self.values[f"{where}:{name}"] = self.describe(cell.cell_contents, f"{where}:{name}")
            except ValueError:  # an empty cell
                continue
        self.values[f"{where}:defaults"] = self.describe(fn.__defaults__, where)
        self.values[f"{where}:kwdefaults"] = self.describe(fn.__kwdefaults__, where)
        for name in sorted(_code_names(fn.__code__)):
            if name in fn.__globals__ and not name.startswith("__"):
                self.values[f"{_module_id(fn)}:{name}"] = self.describe(fn.__globals__[name], name)


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _code_names(c)
    return names


# -- entries -----------------------------------------------------------------------------------------

def _to_bytes(graph: ir.Graph) -> bytes:
    from ..artifacts import _jsonable
    from ..ir_io import _npy_bytes, graph_to_dict

    desc, arrays = graph_to_dict(graph)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("graph.json", json.dumps(desc, default=_jsonable))  # insertion order kept
        for name, a in arrays.items():
            zf.writestr(name, _npy_bytes(a))
    return buf.getvalue()


def _from_bytes(data: bytes) -> ir.Graph:
    from ..ir_io import _graph_from_desc, check_loaded_graph

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        desc = json.loads(zf.read("graph.json"))
        arrays = {n: np.lib.format.read_array(io.BytesIO(zf.read(n)), allow_pickle=False)
                  for n in zf.namelist() if n.endswith(".npy")}
    graph = _graph_from_desc(desc, arrays)
    check_loaded_graph(graph)
    return graph


def _read(path: Path) -> ir.Graph | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        graph = _from_bytes(data)
    except Exception:  # noqa: BLE001 - a damaged entry is a miss; it is traced and written again
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # most recently used
    return graph


def _store(graph: ir.Graph, path: Path) -> None:
    from ..artifacts import atomic_write

    data = _to_bytes(graph)
    try:
        if not same_graph(graph, _from_bytes(data)):
            return
        atomic_write(path, data)
        _prune(path.parent)
    except Exception:  # noqa: BLE001 - a cache that cannot be written only costs time
        return


def _prune(folder: Path, keep: int = MAX_ENTRIES) -> None:
    """Remove the least recently used entries beyond ``keep``: only files named like our entries."""
    entries = [p for p in folder.glob("*.ir.npz") if _ENTRY.fullmatch(p.name)]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for p in entries[keep:]:
        p.unlink(missing_ok=True)


def same_graph(a: ir.Graph, b: ir.Graph) -> bool:
    """Equal node names, order, kinds, fields (arrays bit for bit, types strict), edges, metadata."""
    if list(a.nodes) != list(b.nodes) or not _same(a.edges, b.edges) or not _same(a.metadata, b.metadata):
        return False
    return all(type(a.nodes[n]) is type(b.nodes[n]) and _same(ir.node_fields(a.nodes[n]), ir.node_fields(b.nodes[n]))
               for n in a.nodes)


def _same(x, y) -> bool:
    if type(x) is not type(y):
        return False
    if isinstance(x, np.ndarray):
        return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
    if isinstance(x, dict):
        return list(x) == list(y) and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(_same(p, q) for p, q in zip(x, y))
    if isinstance(x, float) and x != x:
        return y != y
    return x == y
