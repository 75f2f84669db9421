"""Reports as JSON and back (the per-shard result cache of ``--resume``): dataclasses of a fixed list
only (no pickle: a cache folder is data, never code); tuples come back as tuples, floats exactly."""

from __future__ import annotations

import dataclasses
import importlib

_CLASSES = {
    "verify": ("VerifyReport", "ScheduleReport", "LayerReport", "ExtraCheck"),
    "precision": ("ExactnessReport", "ExactnessLayer", "PrecisionReport", "PrecisionLayer"),
    "profile": ("ProfileReport", "LayerProfile"),
}
_ALLOWED = {name: module for module, names in _CLASSES.items() for name in names}


def encode(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = type(obj).__name__
        if name not in _ALLOWED:
            raise TypeError(f"cannot cache a {name}")
        return {"__dc__": name, **{f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v) for v in obj]}
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("cannot cache a dict with non-string keys")
        return {k: encode(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item"):  # numpy scalar
        return obj.item()
    raise TypeError(f"cannot cache a {type(obj).__name__}")


def decode(data):
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__tuple__" in data:
        return tuple(decode(v) for v in data["__tuple__"])
    if "__dc__" in data:
        name = data["__dc__"]
        module = importlib.import_module(f"neurodeploy.{_ALLOWED[name]}")
        cls = getattr(module, name)
        return cls(**{k: decode(v) for k, v in data.items() if k != "__dc__"})
    return {k: decode(v) for k, v in data.items()}
