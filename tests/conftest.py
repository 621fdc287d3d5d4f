import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "instructions")


@pytest.fixture(scope="session")
def model():
    """The offline default model (assembled and converted once, then ~10 s to load)."""
    from helpers.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def shared_instructions():
    path = os.path.abspath(SHARED)
    if not os.path.isdir(path):
        pytest.fail(f"{path} is missing: the tests expect ../shared beside the repository.")
    return path
