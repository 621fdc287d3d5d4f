import os

import pytest

from helpers.instructions import public_splits_folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "instructions")
# Public splits (AdvBench/HarmBench/Alpaca ...) in the loaders' JSON format, when a folder of them sits
# beside the repository (REFUSAL_PUBLIC_INSTRUCTIONS overrides); a plain clone has none.
PUBLIC = str(public_splits_folder())


@pytest.fixture(scope="session")
def model():
    """The offline default model (assembled and converted once, then ~10 s to load)."""
    from helpers.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def plain_hf(model):
    """The same weights loaded a second time as a plain Hugging Face model (no TransformerBridge, no hooks): the
    reference the project's interventions are tested against."""
    from transformers import AutoModelForCausalLM

    from helpers.models import OFFLINE_MODEL, resolve_model_source

    _, folder = resolve_model_source(OFFLINE_MODEL)
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=model.hf.dtype).eval()


@pytest.fixture(scope="session")
def plain_last_logits(plain_hf):
    """Reference: `f(enc, layer=0, edit=identity)` gives the last-position logits of the plain HF model with `edit`
    applied by hand to the residual entering `layer` (hidden_states[layer]), the remaining layers run from there."""
    import torch

    from helpers.generation import layers_from
    from helpers.models import position_ids

    @torch.no_grad()
    def f(enc, layer: int = 0, edit=lambda x: x):
        pos = position_ids(enc["attention_mask"])
        hidden = plain_hf.model(**enc, position_ids=pos, output_hidden_states=True).hidden_states[layer]
        with layers_from(plain_hf, layer):
            out = plain_hf.model(inputs_embeds=edit(hidden), attention_mask=enc["attention_mask"], position_ids=pos,
                                 use_cache=False).last_hidden_state
        return plain_hf.lm_head(out[:, -1])

    return f


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
