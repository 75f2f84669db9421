"""Session-wide test settings."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_trace_cache(tmp_path_factory):
    """Keep the trace cache (neurodeploy.converters.trace_cache) of the test run out of ~/.cache."""
    if "NEURODEPLOY_CACHE_DIR" in os.environ:
        yield
        return
    os.environ["NEURODEPLOY_CACHE_DIR"] = str(tmp_path_factory.mktemp("neurodeploy-cache"))
    try:
        yield
    finally:
        os.environ.pop("NEURODEPLOY_CACHE_DIR", None)
