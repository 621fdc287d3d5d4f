import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "instructions")
# Public splits (AdvBench/HarmBench/Alpaca ...) in the loaders' JSON format, when a folder of them sits
# beside the repository (REFUSAL_PUBLIC_INSTRUCTIONS overrides); a plain clone has none.
PUBLIC = os.environ.get("REFUSAL_PUBLIC_INSTRUCTIONS",
                        os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "instructions"))


@pytest.fixture(scope="session")
def model():
    """The offline default model (assembled and converted once, then ~10 s to load)."""
    from helpers.models import load_model

    return load_model()


@pytest.fixture(scope="session", params=["fixture", "public"])
def instruction_dir(request):
    """A folder of `harmful_train/val.json`, `harmless_train/val.json` in the loaders' format: the small fixture
    (always), and the public splits when they are present (skipped with the reason otherwise)."""
    if request.param == "fixture":
        return FIXTURE
    path = os.path.abspath(PUBLIC)
    if not os.path.isdir(path):
        pytest.skip(f"public instruction splits not found at {path} (set REFUSAL_PUBLIC_INSTRUCTIONS to a folder "
                    "of harmful_val.json etc. to run this twin); the fixture twin ran instead")
    return path
