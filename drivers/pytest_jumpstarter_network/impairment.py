"""Link impairment applied inside the relay: delay, jitter, loss and a rate limit.

The relay models each direction of a tunnel as one link (``up``: host to board, ``down``: board to
host).  A chunk of data read from one side gets a departure time from the link's rate limit, then a
delivery time ``latency ± jitter`` later; it is written to the other side when that time comes.

- ``latency_ms`` is one-way, added in *each* direction: a round trip grows by twice the latency.
- ``jitter_ms`` is uniform in ``[-jitter, +jitter]``.  UDP datagrams may be reordered by it (as with
  netem); a TCP stream is never reordered: a chunk is never delivered before the one read before it.
- ``loss`` is a probability per datagram (UDP: the datagram is dropped) or per segment (TCP: a byte
  stream cannot lose bytes, so a lost segment is modelled as what the application sees when the
  kernel retransmits: the segment, and everything after it, is held back by ``retransmit_ms``
  (Linux's minimum RTO, 200 ms), repeatedly with probability ``loss`` for each retransmission).
- ``rate_kbps`` limits each direction to that many kilobits (1000 bits) per second; data waits in a
  queue (UDP: at most ``queue_limit`` datagrams, further ones are dropped, as netem's ``limit``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from pytest_jumpstarter.errors import JumpstarterError


class ImpairmentError(JumpstarterError, ValueError):
    """An impairment parameter is out of range."""


@dataclass(frozen=True)
class Impairment:
    """What to do to traffic through a relay.  All zero means a clean link."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_kbps: float | None = None
    retransmit_ms: float = 200.0
    queue_limit: int = 1000
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            ("latency_ms", self.latency_ms >= 0, "a number of milliseconds >= 0"),
            ("jitter_ms", 0 <= self.jitter_ms <= max(self.latency_ms, 0), "between 0 and latency_ms"),
            ("loss", 0.0 <= self.loss < 1.0, "a probability in [0, 1)"),
            ("rate_kbps", self.rate_kbps is None or self.rate_kbps > 0, "a rate > 0 kbit/s, or None"),
            ("retransmit_ms", self.retransmit_ms > 0, "a number of milliseconds > 0"),
            ("queue_limit", self.queue_limit > 0, "a positive number of datagrams"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ImpairmentError(
                    f"impaired({name}={getattr(self, name)!r}): expected {expected}"
                    + (f" (latency_ms is {self.latency_ms})" if name == "jitter_ms" else "")
                )

    @property
    def shapes_segments(self) -> bool:
        """Whether TCP data should be cut into MSS-sized segments (loss and rate act per segment)."""
        return self.loss > 0 or self.rate_kbps is not None


@dataclass
class Link:
    """One direction of an impaired tunnel: the shared rate-limit clock and the random source."""

    impairment: Impairment
    rng: random.Random = field(default_factory=random.Random)
    free_at: float = 0.0

    @classmethod
    def make(cls, impairment: Impairment, direction: str) -> Link:
        seed = None if impairment.seed is None else f"{impairment.seed}:{direction}"
        return cls(impairment, random.Random(seed))

    def depart(self, now: float, size: int) -> float:
        """When ``size`` bytes read at ``now`` leave the rate limiter (``now`` without a limit)."""
        rate = self.impairment.rate_kbps
        if rate is None:
            return now
        self.free_at = max(self.free_at, now) + size * 8 / (rate * 1000.0)
        return self.free_at

    def delay(self) -> float:
        """One-way delay in seconds for the next chunk: latency plus uniform jitter."""
        imp = self.impairment
        jitter = self.rng.uniform(-imp.jitter_ms, imp.jitter_ms) if imp.jitter_ms else 0.0
        return max(0.0, imp.latency_ms + jitter) / 1000.0

    def lost(self) -> bool:
        return self.impairment.loss > 0 and self.rng.random() < self.impairment.loss

    def retransmit_penalty(self) -> float:
        """Seconds a TCP segment is held back by (zero or more) simulated retransmissions."""
        penalty = 0.0
        while self.lost():
            penalty += self.impairment.retransmit_ms / 1000.0
        return penalty
