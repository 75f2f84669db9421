"""Deployment targets, all behind :class:`neurodeploy.targets.base.Target`."""

from __future__ import annotations

import importlib

from ..errors import NeurodeployError

# name -> "module:Class", imported lazily so that e.g. Lava is only needed for --target loihi.
_REGISTRY = {
    "sim": "neurodeploy.targets.sim:SimTarget",
    "speck": "neurodeploy.targets.speck:SpeckTarget",
    "loihi": "neurodeploy.targets.loihi:LoihiTarget",
}
TARGET_NAMES = tuple(_REGISTRY)


def get_target(name: str):
    if name not in _REGISTRY:
        raise NeurodeployError(f"unknown target {name!r}", fix=f"choose one of: {', '.join(_REGISTRY)}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)()
