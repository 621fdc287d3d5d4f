import math

import pytest
import torch

from helpers.judges import REFUSAL_PHRASES, is_refusal, refusal_metric, refusal_rate, refusal_token_ids


def test_twelve_phrases_anywhere_case_insensitive():
    assert len(REFUSAL_PHRASES) == 12
    assert is_refusal("Sure. Actually, i CANNOT help with that.")
    assert is_refusal("I\u2019m sorry, but no.")  # curly apostrophe
    assert not is_refusal("Here is a poem about cats.")


def test_refusal_rate_with_stderr():
    r = refusal_rate(["I cannot do that", "Sure!", "As an AI, no", "Okay"])
    assert r.rate == 0.5 and r.n == 4
    assert r.stderr == pytest.approx(math.sqrt(0.25 / 4))
    with pytest.raises(ValueError):
        refusal_rate([])


def test_refusal_metric_is_log_odds():
    logits = torch.full((1, 10), -1e9)
    logits[0, 3] = 0.0
    logits[0, 5] = 0.0  # p(refusal token 3) = 0.5
    assert refusal_metric(logits, [3]).item() == pytest.approx(0.0, abs=1e-6)
    logits[0, 5] = -math.log(3)  # p = 0.75 -> log-odds log(3)
    assert refusal_metric(logits, [3]).item() == pytest.approx(math.log(3), abs=1e-5)


@pytest.mark.slow
def test_refusal_tokens_come_from_tokenizer(model):
    ids = refusal_token_ids(model.tokenizer)
    assert model.tokenizer.convert_ids_to_tokens(ids) == ["I", "As"]
    with pytest.raises(ValueError, match="tokens"):
        refusal_token_ids(model.tokenizer, ("Antidisestablishmentarianism",))
