"""A rank sketch of a numeric reference: K equal-rank bins, each with its smallest and largest value and its sum.

It answers the Wasserstein distance between the reference and a whole current sample with certified bounds:
on a bin where the current quantile function stays on one side of the reference's values, the distance
contributed is exactly |reference bin mass - current mass over the same ranks|, because the integral of a
difference of one sign is the difference of the integrals. Only bins where the two quantile functions cross
leave a gap, bounded by the bin's value range. The distance Evidently computes on the full reference lies
between the two bounds, so the verdict is the same whenever the threshold is not between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TAIL_VALUES = 32


@dataclass(frozen=True)
class RankSketch:
    """Rank bins (`rank_bounds(n, resolution)`) of `n` sorted values; sums are of values minus `center` (precision)."""

    n: int
    resolution: int
    center: float
    low: np.ndarray
    high: np.ndarray
    sums: np.ndarray

    @classmethod
    def of_sorted(cls, values: np.ndarray, bins: int) -> RankSketch:
        """Sketch of an ascending float array with at most `bins` bins."""
        n = len(values)
        resolution = max(1, min(bins, n))
        bounds = rank_bounds(n, resolution)
        center = float(values.mean())
        centered = values - center
        return cls(n=n, resolution=resolution, center=center, low=values[bounds[:-1]].copy(), high=values[bounds[1:] - 1].copy(),
                   sums=np.add.reduceat(centered, bounds[:-1]))

    @property
    def bounds(self) -> np.ndarray:
        return rank_bounds(self.n, self.resolution)

    def to_dict(self) -> dict:
        return {"n": self.n, "resolution": self.resolution, "center": self.center, "low": self.low.tolist(), "high": self.high.tolist(),
                "sums": self.sums.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> RankSketch:
        return cls(n=int(d["n"]), resolution=int(d["resolution"]), center=float(d["center"]), low=np.asarray(d["low"], dtype=np.float64),
                   high=np.asarray(d["high"], dtype=np.float64), sums=np.asarray(d["sums"], dtype=np.float64))

    def wasserstein_bounds(self, current_sorted: np.ndarray) -> tuple[float, float]:
        """Lower and upper bounds of the first Wasserstein distance to an ascending current sample."""
        m = len(current_sorted)
        x = current_sorted - self.center
        prefix = np.concatenate([[0.0], np.cumsum(x)]) / m
        bounds = self.bounds
        # The current quantile function's integral from 0 to bounds/n, in exact integer rank arithmetic.
        whole, part = np.divmod(bounds * m, self.n)
        at = np.minimum(whole, m - 1)
        integral = prefix[at] + (whole - at + part / self.n) * x[at] / m
        current_mass = np.diff(integral)
        lower_parts = np.abs(self.sums / self.n - current_mass)

        # Bins where the current quantiles enter the bin's value range [low, high]. With S the bin's difference of
        # integrals, |Q_ref - Q_cur| integrates to |S| + 2 min(positive part, negative part), and the parts are at
        # most the integrals of (Q_cur - low)+ and (high - Q_cur)+; |Q_cur - mid| + half the range bounds it too.
        first = np.minimum(whole[:-1], m - 1)
        last = np.clip(-(-bounds[1:] * m // self.n) - 1, 0, m - 1)
        low, high = self.low - self.center, self.high - self.center
        crossing = ~((x[last] <= low) | (x[first] >= high))
        upper_parts = lower_parts.copy()
        if crossing.any():
            idx = np.flatnonzero(crossing)
            a, b = bounds[idx] / self.n, bounds[idx + 1] / self.n
            ia, ib = integral[idx], integral[idx + 1]

            def split(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                """Integrals over the bin of (t - Q_cur)+ and (Q_cur - t)+."""
                k = np.searchsorted(x, t, side="left")
                s = np.clip(k / m, a, b)
                i_s = np.where(k / m < a, ia, np.where(k / m > b, ib, prefix[k]))
                return t * (s - a) - (i_s - ia), (ib - i_s) - t * (b - s)

            mid = (low[idx] + high[idx]) / 2
            below_mid, above_mid = split(mid)
            above_low = split(low[idx])[1]
            below_high = split(high[idx])[0]
            by_range = below_mid + above_mid + (high[idx] - low[idx]) / 2 * (b - a)
            by_parts = lower_parts[idx] + 2 * np.minimum(above_low, below_high)
            upper_parts[idx] = np.maximum(np.minimum(by_range, by_parts), lower_parts[idx])
        return float(lower_parts.sum()), float(upper_parts.sum())

    def reconstruct(self) -> np.ndarray:
        """`n` ascending values with the sketch's rank knots, linear inside each bin: an approximate reference."""
        bounds = self.bounds
        sizes = np.diff(bounds)
        offset = np.arange(self.n) - np.repeat(bounds[:-1], sizes)
        span = np.repeat(np.maximum(sizes - 1, 1), sizes)
        return np.repeat(self.low, sizes) + np.repeat(self.high - self.low, sizes) * (offset / span)


def rank_bounds(n: int, bins: int, tail: int = TAIL_VALUES) -> np.ndarray:
    """Bin start ranks over `n` sorted values, and `n` at the end: `bins` near-equal bins, refined at both ends
    into single values (the `tail` extremes) then bins doubling in size, because a heavy tail's last equal bin
    spans most of the range and would leave the widest gap in the distance's bounds."""
    uniform = (np.arange(bins + 1, dtype=np.int64) * n) // bins
    step = max(n // bins, 1)
    doubling = tail * 2 ** np.arange(int(np.log2(max(step / tail, 1))) + 1, dtype=np.int64)
    ends = np.concatenate([np.arange(min(tail, n)), doubling[doubling < step]])
    return np.unique(np.concatenate([uniform, ends, n - ends]).clip(0, n))
