"""Errors that name the layer and the fix.

Every user-facing failure in neurodeploy is a :class:`NeurodeployError` (or a subclass). The CLI
prints ``str(err)`` and exits with status 2, without a traceback.
"""

from __future__ import annotations


class NeurodeployError(Exception):
    """A failure the user can act on.

    ``layer`` is the IR node name or module path the problem is about, ``fix`` what to do.
    """

    def __init__(self, message: str, *, layer: str | None = None, fix: str | None = None):
        self.message = message
        self.layer = layer
        self.fix = fix
        super().__init__(self._format())

    def _format(self) -> str:
        text = f"layer '{self.layer}': {self.message}" if self.layer else self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class LoadError(NeurodeployError):
    """The model file cannot be read (corrupt, truncated, unsafe, wrong format)."""


class UnsupportedOpError(NeurodeployError):
    """The model contains an operation that cannot be converted or deployed."""


class HostOpError(UnsupportedOpError):
    """An operation (e.g. spike-driven attention) that must run on the host, not on synaptic cores."""


class DesignRuleError(NeurodeployError):
    """One or more target design rules are violated; ``violations`` lists every one."""

    def __init__(self, violations: list, target: str):
        self.violations = list(violations)
        lines = [f"{len(self.violations)} design-rule violation(s) for target '{target}':"]
        lines += [f"  - {v}" for v in self.violations]
        super().__init__("\n".join(lines))


class VerificationError(NeurodeployError):
    """A schedule that must be exact is not."""
