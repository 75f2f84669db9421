"""neurodeploy: compile self-supervised SFA spiking networks for neuromorphic targets."""

__version__ = "0.1.0"
