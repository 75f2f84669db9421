"""Speck (SynSense) target: design rules, 8/16-bit quantisation, core mapping, config artefact, simulator."""
from .target import SpeckTarget  # noqa: F401
