"""Welch's t-test, Student-t tails, ranks and the bootstrap against known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from frernn import stats


@pytest.mark.parametrize(
    ("t", "df", "p"),
    [(2.0, 4, 0.1161), (2.776445, 4, 0.05), (2.228139, 10, 0.05), (1.0, 1, 0.5), (0.0, 7, 1.0)],
)
def test_two_sided_p_matches_student_t_tables(t: float, df: float, p: float) -> None:
    assert stats.t_two_sided_p(t, df) == pytest.approx(p, abs=2e-4)
    assert stats.t_two_sided_p(-t, df) == pytest.approx(p, abs=2e-4)


def test_critical_value_inverts_the_tail() -> None:
    assert stats.t_critical(4) == pytest.approx(2.776445, abs=1e-5)
    assert stats.t_critical(1e6) == pytest.approx(1.959964, abs=1e-4)


def test_welch_from_summaries_and_undefined_cases() -> None:
    test = stats.welch(98.0, 1.0, 3, 97.64, 0.10, 5)
    var_a, var_b = 1 / 3, 0.01 / 5
    assert test.se == pytest.approx(math.sqrt(var_a + var_b))
    assert test.df == pytest.approx((var_a + var_b) ** 2 / (var_a**2 / 2 + var_b**2 / 4))
    assert test.t == pytest.approx(0.36 / test.se)
    low, high = test.interval()
    assert low < 0.36 < high and high - 0.36 == pytest.approx(0.36 - low)
    assert stats.welch(98.0, math.nan, 1, 97.64, 0.10, 5) is None  # one run
    assert stats.welch(98.0, 0.0, 5, 97.0, 0.0, 5) is None  # no spread on either side
    assert stats.welch_samples([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).t == 0.0


def test_ranks_share_ties_and_put_inf_last() -> None:
    assert list(stats.ranks(np.array([3, 1, 2, 2, math.inf]))) == [4, 1, 2.5, 2.5, 5]
    assert stats.spearman(np.array([1, 2, 3, 4.0]), np.array([1, 3, 2, math.inf])) == (
        pytest.approx(0.8)
    )
    assert math.isnan(stats.spearman(np.array([1, 2, 3.0]), np.array([5, 5, 5.0])))


def test_resamples_draw_within_each_group() -> None:
    draws = stats.resamples([[1.0, 2.0], [10.0, 20.0, 30.0]], draws=50)
    assert draws[0].shape == (50, 2) and draws[1].shape == (50, 3)
    assert set(np.unique(draws[0])) <= {1.0, 2.0} and set(np.unique(draws[1])) <= {10, 20, 30}
    assert stats.percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))
