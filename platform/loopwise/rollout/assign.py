"""Arm assignment: which version answers a request, from the traffic split a worker polled.

canary: weighted random per request; ab: sticky per entity (a keyed BLAKE2b hash of the entity key, salted with
the rollout id, mapped to [0, 1) against the cumulative weights: the same entity always meets the same arm within
a rollout, and a new rollout reshuffles); shadow: the champion answers and the challenger also scores; bluegreen:
everything to the arm that holds the traffic. A `Router` is built once per traffic change and then routes without
allocating (canary: one `random()` and a bisect; fixed strategies: a prebuilt route) or in batches with numpy.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from loopwise.rollout.state import CHAMPION, Strategy, Traffic

_TOP53 = 2.0**-53


class Route(NamedTuple):
    """The arm (and version) whose answer is returned, and the arms that also score the request, unreturned."""

    arm: str
    version: str
    shadow: tuple[tuple[str, str], ...] = ()


def unit(key: str, salt: bytes) -> float:
    """A stable uniform number in [0, 1) for `key`: the top 53 bits of an 8-byte keyed BLAKE2b digest."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, key=salt).digest()
    return (int.from_bytes(digest, "big") >> 11) * _TOP53


def units(keys: Iterable[str], salt: bytes) -> np.ndarray:
    """`unit` for many keys; hashing is per key, the mapping to [0, 1) is one vector operation."""
    joined = b"".join(hashlib.blake2b(k.encode(), digest_size=8, key=salt).digest() for k in keys)
    return (np.frombuffer(joined, dtype=">u8") >> np.uint64(11)).astype(np.float64) * _TOP53


class Router:
    """Routes requests for one traffic split; rebuild it when `traffic.revision` or `traffic.rollout_id` changes."""

    def __init__(self, traffic: Traffic, rng: random.Random | None = None) -> None:
        if not traffic:
            raise ValueError("no traffic split: the model has no rollout (serve its recorded deployment)")
        self.traffic = traffic
        self.strategy = traffic.strategy
        self.arms = tuple(traffic)
        self.versions = tuple(share.version for share in traffic.values())
        weights = np.array([share.weight for share in traffic.values()], dtype=np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"traffic weights {dict(zip(self.arms, weights.tolist(), strict=True))} must be >= 0 "
                             "with a positive sum")
        cumulative = np.cumsum(weights / weights.sum())
        cumulative[-1] = 1.0  # u < 1 always lands on an arm, whatever the rounding
        self._cumulative = cumulative
        self._bounds = tuple(cumulative.tolist())
        self._routes = tuple(Route(a, v) for a, v in zip(self.arms, self.versions, strict=True))
        self._salt = (traffic.rollout_id or "").encode()[:64]
        self._random = (rng or random.Random()).random
        self._np_rng = np.random.default_rng(None if rng is None else rng.getrandbits(64))
        self._fixed: Route | None = None
        if len(self.arms) == 1:
            self._fixed = self._routes[0]
        elif self.strategy is Strategy.SHADOW:
            main = self.arms.index(CHAMPION) if CHAMPION in self.arms else int(weights.argmax())
            self._fixed = Route(self.arms[main], self.versions[main],
                                tuple((a, v) for i, (a, v) in enumerate(zip(self.arms, self.versions, strict=True))
                                      if i != main))
        elif self.strategy is Strategy.BLUEGREEN:
            self._fixed = self._routes[int(weights.argmax())]
        self.sticky = self.strategy is Strategy.AB and self._fixed is None

    def route(self, key: str | None = None) -> Route:
        """The route of one request; an A/B split needs the entity key (the unit the test randomizes)."""
        if self._fixed is not None:
            return self._fixed
        if self.sticky:
            if key is None:
                raise ValueError("an A/B split is sticky per entity: pass the entity key of the request")
            return self._routes[bisect_right(self._bounds, unit(key, self._salt))]
        return self._routes[bisect_right(self._bounds, self._random())]

    def route_many(self, n: int | None = None, keys: Sequence[str] | None = None) -> np.ndarray:
        """Arm indices (into `self.arms`) for a batch of `n` requests, or of the entities `keys` (A/B)."""
        if self._fixed is not None:
            size = len(keys) if keys is not None else int(n or 0)
            return np.full(size, self.arms.index(self._fixed.arm), dtype=np.intp)
        if self.sticky:
            if keys is None:
                raise ValueError("an A/B split is sticky per entity: pass the entity keys of the batch")
            u = units(keys, self._salt)
        else:
            u = self._np_rng.random(len(keys) if keys is not None else int(n or 0))
        return np.searchsorted(self._cumulative, u, side="right")

    def scorers(self, route: Route) -> tuple[tuple[str, str], ...]:
        """Every (arm, version) that scores a request on `route`: the answering arm first, then its shadows."""
        return ((route.arm, route.version), *route.shadow)

