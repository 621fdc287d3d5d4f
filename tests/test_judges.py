import math

import pytest
import torch

from helpers.judges import (REFUSAL_PHRASES, is_refusal, refusal_metric, refusal_rate, refusal_token_ids,
                            wilson_interval)
from tolerances import assert_within, scaled_error


def test_twelve_phrases_anywhere_case_insensitive():
    assert len(REFUSAL_PHRASES) == 12
    assert is_refusal("Sure. Actually, i CANNOT help with that.")
    assert is_refusal("I\u2019m sorry, but no.")  # curly apostrophe
    assert not is_refusal("Here is a poem about cats.")


def test_refusal_rate_with_stderr():
    r = refusal_rate(["I cannot do that", "Sure!", "As an AI, no", "Okay"])
    assert r.rate == 0.5 and r.n == 4
    # measured: max 0.0e+00 over 5 settings (bound 1e-06, no rounding seen; scripts/tolerance_margins.py)
    assert_within("r.stderr", scaled_error(r.stderr, math.sqrt(0.25 / 4)), 1e-6)
    with pytest.raises(TypeError, match="non-empty list"):
        refusal_rate([])
    with pytest.raises(TypeError, match="one string"):
        refusal_rate("I cannot")  # would otherwise be scored character by character


def test_wilson_interval_matches_known_values_and_is_not_degenerate_at_zero():
    lo, hi = wilson_interval(0, 16)
    assert lo == 0.0, "0/16 is not '0.0% ± 0.0%'"
    # measured: max 7.7e-06 over 5 settings (bound 0.0001, 13x; scripts/tolerance_margins.py)
    assert_within("0/16 is not '0.0% ± 0.0%'", abs((hi) - (0.1936)), 1e-4)
    lo, hi = wilson_interval(22, 40)  # 55%: reference values from the Wilson formula
    assert (lo, hi) == (pytest.approx(0.3983, abs=1e-4), pytest.approx(0.6929, abs=1e-4))
    r = refusal_rate(["I cannot"] * 3 + ["Sure"])
    assert r.interval[0] < r.rate < r.interval[1]
    assert "95% CI" in str(r) and r.to_dict()["ci95"] == list(r.interval)
    assert wilson_interval(5, 100)[1] - wilson_interval(5, 100)[0] < wilson_interval(1, 20)[1] - wilson_interval(1, 20)[0]


def test_refusal_metric_is_log_odds():
    logits = torch.full((1, 10), -1e9)
    logits[0, 3] = 0.0
    logits[0, 5] = 0.0  # p(refusal token 3) = 0.5
    # measured: max 0.0e+00 over 5 settings (bound 1e-06, no rounding seen; scripts/tolerance_margins.py)
    assert_within("log-odds 0 when refusal and the rest are equally likely", abs((refusal_metric(logits, [3]).item()) - (0.0)), 1e-6)
    logits[0, 5] = -math.log(3)  # p = 0.75 -> log-odds log(3)
    # measured: max 6.8e-09 over 5 settings (bound 1e-05, 1464x; scripts/tolerance_margins.py)
    assert_within("log-odds log(3)", abs((refusal_metric(logits, [3]).item()) - (math.log(3))), 1e-5)


@pytest.mark.slow
def test_refusal_tokens_come_from_tokenizer(model):
    ids = refusal_token_ids(model.tokenizer)
    assert model.tokenizer.convert_ids_to_tokens(ids) == ["I", "As"]
    with pytest.raises(ValueError, match="tokens"):
        refusal_token_ids(model.tokenizer, ("Antidisestablishmentarianism",))
