"""How sure each number of the ablation table is: bootstrap intervals over the test items.

Every interval is scipy's percentile bootstrap (``scipy.stats.bootstrap``, ``method="percentile"``), seeded, over
the items a number is computed from:

- the winning score of an arm against ``ori``, (win − lose) / n + 1, is the mean of one value per item (+1 win,
  0 tie, −1 lose) plus 1: each item's outcome already compares the two arms on that item, so resampling items is
  the paired bootstrap; the difference is larger than the uncertainty when the interval excludes 1.0;
- a mean grade (MT-Bench) is the mean over questions; an arm against ``ori`` is the mean of the per-question
  differences over the questions both have, resampled in pairs; larger than the uncertainty when that interval
  excludes 0;
- a harness accuracy comes with lm_eval's own standard error (it keeps no per-item results here): the interval is
  the normal one, ± z·se, and the difference to ``ori`` ± z·√(se₁² + se₂²), unpaired and so on the wide side.

The percentile method is used rather than BCa: with few items and outcomes in {−1, 0, 1} BCa's acceleration is
often undefined, and a percentile interval is what a reader can redo by hand.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

OUTCOME_VALUES = {"win": 1, "tie": 0, "lose": -1}


@dataclass(frozen=True)
class Estimate:
    """A number with its interval: ``value`` (the statistic on the items as they are), ``low`` / ``high`` (the
    interval), ``n`` (the items), and ``excludes`` (whether the interval leaves out the reference value it is
    compared with: 1.0 for a winning score, 0 for a difference; None where nothing is compared)."""

    value: float | None
    low: float | None
    high: float | None
    n: int
    reference: float | None = None
    excludes: bool | None = None

    def to_dict(self) -> dict[str, float | int | bool | None]:
        return asdict(self)

    def format(self, digits: int = 2) -> str:
        """``1.12 [0.95, 1.30]`` (``*`` after it when the interval excludes its reference); ``-`` for none."""
        if self.value is None:
            return "-"
        if self.low is None or self.high is None:
            return f"{self.value:.{digits}f}"
        mark = "*" if self.excludes else ""
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]{mark}"


def _excludes(low: float | None, high: float | None, reference: float | None) -> bool | None:
    if reference is None or low is None or high is None:
        return None
    return bool(reference < low or reference > high)


def bootstrap_mean(
    values: Sequence[float],
    confidence_level: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    reference: float | None = None,
    shift: float = 0.0,
) -> Estimate:
    """The mean of ``values`` (plus ``shift``) with its percentile bootstrap interval; one value gives no interval,
    none gives no estimate."""
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    n = int(x.size)
    if n == 0:
        return Estimate(None, None, None, 0, reference, None)
    value = float(x.mean()) + shift
    if n == 1:
        return Estimate(value, None, None, 1, reference, None)
    if np.all(x == x[0]):  # every resample has the same mean: scipy warns and answers NaN, the interval is a point
        low = high = value
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's DegenerateDataWarning on near-constant data
            result = bootstrap(
                (x,),
                np.mean,
                confidence_level=confidence_level,
                n_resamples=n_resamples,
                method="percentile",
                rng=np.random.default_rng(seed),
            )
        low = float(result.confidence_interval.low) + shift
        high = float(result.confidence_interval.high) + shift
    return Estimate(value, low, high, n, reference, _excludes(low, high, reference))


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    confidence_level: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Estimate:
    """mean(a − b) over paired items (the same item at the same position) with the paired bootstrap interval;
    larger than the uncertainty when the interval excludes 0."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return bootstrap_mean(d, confidence_level, n_resamples, seed, reference=0.0)


def winning_score(
    outcomes: Sequence[str], confidence_level: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> Estimate:
    """(win − lose) / n + 1 over items' outcomes (``win``, ``tie``, ``lose``) with its bootstrap interval; larger
    than the uncertainty when the interval excludes 1.0 (as good as the reference)."""
    values = [OUTCOME_VALUES[o] for o in outcomes]
    return bootstrap_mean(values, confidence_level, n_resamples, seed, reference=1.0, shift=1.0)


def normal_interval(
    value: float | None, stderr: float | None, confidence_level: float = 0.95, reference: float | None = None
) -> Estimate:
    """``value ± z·stderr`` (z the normal quantile of ``confidence_level``), for a number that comes with its
    standard error only."""
    from scipy.stats import norm

    if value is None:
        return Estimate(None, None, None, 0, reference, None)
    if stderr is None or not math.isfinite(stderr):
        return Estimate(value, None, None, 0, reference, None)
    z = float(norm.ppf(0.5 + confidence_level / 2))
    low, high = value - z * stderr, value + z * stderr
    return Estimate(value, low, high, 0, reference, _excludes(low, high, reference))
