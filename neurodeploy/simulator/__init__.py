"""Bit-accurate time-stepped IF simulator (layer-synchronous and streaming schedules)."""

from .core import SCHEDULES, SimResult, simulate

__all__ = ["simulate", "SimResult", "SCHEDULES"]
