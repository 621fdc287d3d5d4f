"""The tables and pages notebooks 04 and 06 show, on synthetic results."""

from helpers import tables


def interval(e, lo, hi):
    return {"estimate": e, "ci95": [lo, hi]}


def test_protocol_table_rows_and_the_chat_edge():
    prot = {"r_norm": 4.821, "split_half_cosine": {"mean": 0.9, "sd": 0.02},
            "faithfulness": {"saes": {n: {"cosine": interval(c, c - 0.1, c + 0.1), "relative_mse": interval(0.5, 0.4, 0.6)}
                                      for n, c in (("chat", 0.732), ("webtext_chat", 0.544))},
                             "differences": {"chat - webtext_chat": {"cosine": interval(0.188, 0.1, 0.3)}}},
            "max_decoder_cosine": {"chat": {"latent": 7, "cosine": 0.511}, "webtext_chat": {"latent": 3, "cosine": 0.16}}}
    t = tables.protocol_table({"Kissane · no system turn": prot}, ["webtext_chat", "chat"], ("webtext_chat", "chat"))
    assert list(t.index) == [("Kissane · no system turn", "webtext_chat"), ("Kissane · no system turn", "chat"),
                             ("Kissane · no system turn", "chat − webtext_chat")]
    assert t.loc[("Kissane · no system turn", "chat"), "cosine of r̂ [95% CI]"] == "0.732 [0.632, 0.832]"
    assert t.loc[("Kissane · no system turn", "chat"), "max decoder cosine (latent)"] == "0.511 (7)"
    assert t.loc[("Kissane · no system turn", "chat − webtext_chat"), "cosine of r̂ [95% CI]"] == "0.188 [0.100, 0.300]"
    assert t.loc[("Kissane · no system turn", "chat − webtext_chat"), "‖r‖"] == ""


def test_gradient_page_escapes_prompts_and_shows_the_strongest_contexts():
    contexts = {5: [{"activation": 1.0, "before": "a weak", "token": "x"}, {"activation": 3.0, "before": "the strong",
                                                                            "token": "<y>"}]}
    page = tables.gradient_latents_html("chat SAE", {"hug <someone>": "case study"},
                                        {"hug <someone>": {"positive": [(5, 0.25)], "negative": [(9, -0.1)]}},
                                        {5: 0.3, 9: -0.2}, contexts)
    assert "hug &lt;someone&gt;" in page and "<someone>" not in page
    assert page.index("the strong[[&lt;y&gt;]]") < page.index("a weak[[x]]")
    assert "(never fires held-out)" in page  # latent 9 has no contexts
    assert tables.context_text([]) == "(never fires held-out)"


def test_judged_rates_table_keeps_each_side_and_both_judges():
    r = lambda rate, se: {"rate": rate, "stderr": se}  # noqa: E731
    t = tables.judged_rates_table({
        "harmful": {"none": {"substring": r(0.5, 0.1), "starts_with": r(0.45, 0.1)},
                    "clamp chat top latent (3) to 0": {"substring": r(0.25, 0.05), "starts_with": r(0.2, 0.05)}},
        "harmless": {"add chat top latent × 1.0": {"substring": r(0.125, 0.05), "starts_with": r(0.0, 0.0)}}})
    assert list(t.index) == ["none", "clamp chat top latent (3) to 0", "add chat top latent × 1.0"]
    assert list(t["prompts"]) == ["harmful", "harmful", "harmless"]
    assert t.loc["none", "substring"] == "50.0% ± 10.0%" and t.loc["none", "starts-with"] == "45.0% ± 10.0%"
    assert t.loc["add chat top latent × 1.0", "starts-with"] == "0.0% ± 0.0%"


def test_fmt_se_says_when_there_is_no_standard_error():
    assert tables.fmt_se(0.3191, 0.0123, "+.3f") == "+0.319 ± 0.012"
    assert tables.fmt_se(3.3938, float("nan")) == "3.394 (one window: no s.e.)"
