"""Small statistics the course needs, without scipy: Pearson's chi-square test against
equal shares, with both tails.

- :func:`chi2_sf` -- P(X >= x) for a chi-square variable (the usual p-value: counts that
  are too *uneven*)
- :func:`chi2_cdf` -- P(X <= x) (the lower tail: counts that are too *even*, e.g. a
  round-robin dealer whose counts never wobble)
- :func:`even_tail` -- the lower tail for whole-number counts (simulated draws)
- :func:`chi_square` -- the test of a list of counts against equal shares

Used by 01_05 (SO_REUSEPORT spreads); general enough for any "is this uniform?" question.
"""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ["chi2_sf", "chi2_cdf", "chi_square", "even_tail"]


def chi2_sf(x: float, dof: int) -> float:
    """P(X ≥ x) for a chi-square variable X with *dof* (a positive integer) degrees of freedom.

    Closed forms of the regularised upper incomplete gamma function Q(dof/2, x/2):

    - even dof = 2k:  exp(-x/2) · Σ_{i<k} (x/2)^i / i!
    - odd dof = 2k+1: erfc(√(x/2)) + exp(-x/2) · Σ_{i=1..k} (x/2)^(i-1/2) / Γ(i+1/2)
    """
    if isinstance(dof, bool) or not isinstance(dof, int) or dof < 1:
        raise ValueError(f"dof must be a positive integer, not {dof!r}")
    x = float(x)
    if math.isnan(x):
        raise ValueError("x is NaN")
    if x <= 0:
        return 1.0
    h = x / 2.0
    if dof % 2 == 0:
        total, term = 0.0, 1.0
        for i in range(dof // 2):
            if i:
                term *= h / i
            total += term
        return min(1.0, math.exp(-h) * total)
    total = math.erfc(math.sqrt(h))
    for i in range(1, (dof - 1) // 2 + 1):
        total += math.exp((i - 0.5) * math.log(h) - h - math.lgamma(i + 0.5))
    return min(1.0, total)


def chi_square(counts: Sequence[int]) -> dict:
    """Pearson's chi-square test of *counts* against equal shares.

    Returns ``statistic`` (Σ (observed − expected)² / expected), ``dof`` (categories − 1),
    ``p_value`` (how often a truly uniform choice gives a statistic at least this large;
    None with one category; a tiny one rejects "equal odds" because the counts are too
    uneven), ``p_even`` (the lower tail, how often it gives one at most this large: a tiny
    one rejects "equal odds" because the counts are too *even*; a p_value close to 1 says
    the same), ``expected`` (the equal share) and ``sigma`` (the binomial
    standard deviation of one category's count).
    """
    counts = [int(c) for c in counts]
    n, total = len(counts), sum(counts)
    if n == 0 or total == 0:
        raise ValueError("chi_square needs at least one non-zero count")
    expected = total / n
    stat = sum((c - expected) ** 2 for c in counts) / expected
    dof = n - 1
    return {"statistic": stat, "dof": dof, "p_value": chi2_sf(stat, dof) if dof else None,
            "p_even": even_tail(counts, stat) if dof else None,
            "expected": expected, "sigma": math.sqrt(total * (1 / n) * (1 - 1 / n))}


def even_tail(counts: Sequence[int], stat: float, samples: int = 100_000, seed: int = 0) -> float:
    """P(statistic ≤ *stat*) when *sum(counts)* items each pick one of the categories with
    equal odds: the lower tail, counted on simulated multinomial draws (fixed seed).

    The continuous chi-square CDF is no good here: counts are whole numbers, so an exactly
    even split has a real chance (about 2.5 % for 1000 items in two categories), while the
    continuous lower tail at 0 is 0 and would call every such run "dealt in turn"."""
    import numpy as np
    n, total = len(counts), int(sum(counts))
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(total, [1.0 / n] * n, size=samples)
    expected = total / n
    sim = ((draws - expected) ** 2).sum(axis=1) / expected
    return float(np.count_nonzero(sim <= stat + 1e-9)) / samples


def chi2_cdf(x: float, dof: int) -> float:
    """P(X <= x) for a chi-square variable with *dof* degrees of freedom: 1 - :func:`chi2_sf`.
    Small when the statistic is suspiciously small, i.e. the counts are closer to equal
    than chance allows."""
    return max(0.0, 1.0 - chi2_sf(x, dof))

