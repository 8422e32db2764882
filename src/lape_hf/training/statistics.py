"""Exact paired tests for comparing two models: McNemar on the same test images, the sign test over seeds.

Both are exact binomial tests with p = 1/2, two-sided (twice the smaller tail, capped at 1), computed with
`math.comb`: no approximation, and no dependency beyond the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple


def binomial_two_sided_p(successes: int, trials: int) -> float:
    """Exact two-sided p-value of `successes` out of `trials` under Binomial(trials, 1/2); 1.0 for no trials."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes ({successes}) <= trials ({trials}).")
    if trials == 0:
        return 1.0
    smaller = min(successes, trials - successes)
    tail = sum(math.comb(trials, k) for k in range(smaller + 1))
    # Integers until the one division: no float overflow of comb() for thousands of trials.
    return min(1.0, 2 * tail / 2**trials)


class McNemarResult(NamedTuple):
    only_b_correct: int  # the discordant pairs in each direction; concordant pairs carry no information
    only_a_correct: int
    p_value: float


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> McNemarResult:
    """McNemar's exact test of two classifiers on the same examples (in the same order): the exact two-sided
    binomial p-value of the discordant pairs (only-b-right out of all discordant pairs under p = 1/2)."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"the two prediction sets differ in length ({len(a_correct)} vs {len(b_correct)}).")
    pairs = list(zip(a_correct, b_correct, strict=True))
    only_b = sum(1 for a, b in pairs if b and not a)
    only_a = sum(1 for a, b in pairs if a and not b)
    return McNemarResult(only_b, only_a, binomial_two_sided_p(only_b, only_b + only_a))


def sign_test_exact(differences: Sequence[float]) -> float:
    """Exact two-sided sign test that the paired differences are centred on zero; ties (0) are dropped."""
    positive = sum(1 for value in differences if value > 0)
    negative = sum(1 for value in differences if value < 0)
    return binomial_two_sided_p(positive, positive + negative)
