"""Small statistics for comparisons and verdicts: Welch's t-test, rank correlation, bootstrap.

Pure numpy and math (no SciPy): the Student-t tail comes from the regularized incomplete beta
function, evaluated by its continued fraction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PAPER_N = 5  # runs behind every published mean ± std
CONFIDENCE = 0.95
BOOTSTRAP_DRAWS = 1000


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1); NaN where undefined."""
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean()) if arr.size else math.nan
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return mean, std


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz method)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_critical(df: float, confidence: float = CONFIDENCE) -> float:
    """The two-sided critical value: P(|T| >= c) = 1 - confidence (bisection)."""
    low, high = 0.0, 1e3
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if t_two_sided_p(mid, df) > 1 - confidence else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class Welch:
    """Difference of two means (a − b), its standard error, Welch's t, df and two-sided p."""

    diff: float
    se: float
    t: float
    df: float
    p: float

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        """Confidence interval of the difference (Welch df)."""
        half = t_critical(self.df, confidence) * self.se
        return self.diff - half, self.diff + half


def welch(
    mean_a: float, std_a: float, n_a: float, mean_b: float, std_b: float, n_b: float
) -> Welch | None:
    """Welch's unequal-variance t-test from summary statistics; None when it is undefined.

    Undefined: fewer than two runs on a side, a missing mean or std, or zero spread on both.
    """
    numbers = (mean_a, std_a, n_a, mean_b, std_b, n_b)
    if any(v is None or not math.isfinite(float(v)) for v in numbers) or min(n_a, n_b) < 2:
        return None
    var_a, var_b = std_a**2 / n_a, std_b**2 / n_b
    se = math.sqrt(var_a + var_b)
    if se == 0.0:
        return None
    df = (var_a + var_b) ** 2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
    t = (mean_a - mean_b) / se
    return Welch(mean_a - mean_b, se, t, df, t_two_sided_p(t, df))


def welch_samples(a: Sequence[float], b: Sequence[float]) -> Welch | None:
    """Welch's test of two samples (a − b)."""
    return welch(*mean_std(a), len(a), *mean_std(b), len(b))


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties sharing their average rank (inf ranks highest)."""
    arr = np.asarray(values, dtype=float)
    below = (arr[..., None, :] < arr[..., :, None]).sum(-1)
    equal = (arr[..., None, :] == arr[..., :, None]).sum(-1)
    return below + (equal + 1) / 2


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray | float:
    """Spearman's rank correlation along the last axis; NaN where a side is constant."""
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    norm = np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(-1) / norm
    return float(rho) if np.ndim(rho) == 0 else rho


def resamples(
    groups: Sequence[Sequence[float]], draws: int = BOOTSTRAP_DRAWS, seed: int = 0
) -> list[np.ndarray]:
    """Bootstrap draws, one ``(draws, len(group))`` array per group: each group's runs
    resampled with replacement on their own (independent runs per configuration)."""
    rng = np.random.default_rng(seed)
    out = []
    for group in groups:
        arr = np.asarray(group, dtype=float)
        out.append(arr[rng.integers(0, len(arr), (draws, len(arr)))])
    return out


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Central percentile interval of bootstrap samples (NaNs ignored)."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.nanpercentile(samples, [tail, 100 - tail])
    return float(low), float(high)
