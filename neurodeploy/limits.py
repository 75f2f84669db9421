"""Limits the command line needs for its option declarations: kept here, free of numpy/torch, so
that ``neurodeploy --help`` does not import the IR (see tests/test_startup.py)."""

# Largest spike budget D: a layer takes D timesteps (simulation work grows with D) and D-bit spike
# counts; SFA models use D = 4..16. 2^15 keeps counts in int16 and a simulation finite.
MAX_SPIKE_BUDGET = 2 ** 15
