"""Numeric tolerances with their measured margins.

Every comparison in the suite whose result depends on float rounding goes through `assert_within(name, observed,
bound)`: `observed` is a well-conditioned error (an absolute difference, or a difference divided by a scale that
cannot be near zero), `bound` the tolerance. The comment beside each call gives the largest value measured by
`python scripts/tolerance_margins.py`, which runs these tests with 1 and 2 threads, with MKL's conditional numerical
reproducibility off, AUTO, and on older code paths (COMPATIBLE, SSE4_2, standing in for other CPUs), and writes
the maxima to docs/measurements/tolerances.json. Bounds are at least 10x the largest measured value, or a
mistake the test must catch sits below them (said beside the call).

When REFUSAL_TOLERANCE_LOG names a file, each observed value is appended to it as a JSON line.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path


def scaled_error(a, b, floor: float = 1.0) -> float:
    """max |a - b| / max(|b|, floor), element-wise: relative for large values, absolute near zero (a relative
    error divided by a value near zero turns rounding into a failure)."""
    import torch

    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).abs() / b.abs().clamp(min=floor)).max().item()


def max_abs(a, b) -> float:
    """max |a - b|."""
    import torch

    return (torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max().item()


def assert_within(name: str, observed: float, bound: float) -> None:
    """Assert `observed <= bound` (NaN fails), logging the value when REFUSAL_TOLERANCE_LOG is set."""
    from helpers.checks import log_tolerance

    observed = float(observed)
    if os.environ.get("REFUSAL_TOLERANCE_LOG"):
        info = inspect.getframeinfo(inspect.currentframe().f_back)
        line = info.positions.lineno if info.positions and info.positions.lineno else info.lineno
        log_tolerance(name, observed, bound, Path(info.filename).name, line)
    assert observed <= bound, f"{name}: {observed:.3e} exceeds the tolerance {bound:.0e}"
