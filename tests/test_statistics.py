"""The exact paired tests against hand-computed binomial sums (and scipy where installed)."""

from __future__ import annotations

import pytest

from lape_hf.training.statistics import binomial_two_sided_p, mcnemar_exact, sign_test_exact


def test_two_sided_binomial_p_is_twice_the_smaller_tail():
    assert binomial_two_sided_p(0, 5) == 2 / 32
    assert binomial_two_sided_p(5, 5) == 2 / 32
    assert binomial_two_sided_p(2, 10) == 2 * (1 + 10 + 45) / 1024  # 0.109375
    assert binomial_two_sided_p(8, 10) == binomial_two_sided_p(2, 10)
    assert binomial_two_sided_p(3, 6) == 1.0  # capped: both tails overlap at the centre
    assert binomial_two_sided_p(0, 0) == 1.0
    assert binomial_two_sided_p(0, 1000) == 2.0**-999  # exact integer sums, one division: no overflow
    with pytest.raises(ValueError):
        binomial_two_sided_p(4, 3)


def test_mcnemar_counts_the_discordant_pairs_in_each_direction():
    a = [True, True, False, False, True, False, True, True, True, True, True, True]
    b = [True, False, True, False, False, False, False, False, False, False, False, False]
    # only b right: index 2 (1); only a right: 1, 4, 6..11 (8); concordant pairs do not count
    assert mcnemar_exact(a, b) == (1, 8, 2 * (1 + 9) / 512)
    assert mcnemar_exact(b, a) == (8, 1, 2 * (1 + 9) / 512)
    assert mcnemar_exact(a, a) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_exact(a, b[:-1])


def test_sign_test_drops_ties_and_is_two_sided():
    assert sign_test_exact([0.01, 0.02, 0.003, 0.1, 0.5]) == 0.0625
    assert sign_test_exact([-0.01, -0.02, -0.003, -0.1, -0.5]) == 0.0625
    assert sign_test_exact([0.01, 0.0, 0.02, -0.01]) == 1.0  # 2 up, 1 down
    assert sign_test_exact([0.0, 0.0]) == 1.0


def test_agrees_with_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats")
    for trials in (1, 7, 20, 61):
        for successes in range(trials + 1):
            expected = stats.binomtest(successes, trials, 0.5, alternative="two-sided").pvalue
            assert binomial_two_sided_p(successes, trials) == pytest.approx(expected, rel=1e-9)
