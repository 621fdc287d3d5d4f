"""Figure helpers, on synthetic rates."""

from helpers.judges import Rate
from helpers.plotting import k_sweep


def test_k_sweep_draws_a_line_per_curve_with_error_bars_and_the_reference_levels():
    ks = [1, 4, 16]
    rates = [Rate(0.5, 40), Rate(0.25, 40), Rate(0.05, 40)]
    fig = k_sweep(ks, {"chat: top-k by delta": (rates, "solid"), "chat: top-k by omp": (rates[::-1], "dot")}, "t",
                  {"ablate r": 0.025, "none": 0.55})
    assert [t.name for t in fig.data] == ["chat: top-k by delta", "chat: top-k by omp"]
    assert list(fig.data[0].x) == ks and list(fig.data[0].y) == [0.5, 0.25, 0.05]
    assert list(fig.data[1].error_y.array) == [r.stderr for r in rates[::-1]] and fig.data[1].line.dash == "dot"
    assert [s.y0 for s in fig.layout.shapes] == [0.025, 0.55]
    assert [a.text for a in fig.layout.annotations] == ["ablate r", "none"]
    assert fig.layout.xaxis.type == "log"
