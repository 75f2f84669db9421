"""Keep torch.export's tracing chatter away from the user.

Converting a TorchScript module (``TS2EPConverter`` marks every dimension ``Dim.AUTO``) or exporting
with a batch of one makes torch.export log warnings such as "dimension inputs['x'].shape[0] 0/1
specialized; Dim.AUTO was specified ..." through Python ``logging`` (not ``warnings``). They are
about torch.export's own symbolic shapes, never about the user's model, so neurodeploy silences them
(and torch's Python warnings) while it traces; real failures still raise.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager

LOGGERS = ("torch._export", "torch.export", "torch._subclasses.fake_tensor",
           "torch.fx.experimental.symbolic_shapes", "torch._dynamo")


@contextmanager
def quiet_export():
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)  # failures still raise, as exceptions
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
