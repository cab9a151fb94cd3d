"""A token bucket: at most ``rate`` units per second on average, ``burst`` at once."""

from __future__ import annotations


class TokenBucket:
    """Starts full. ``take`` spends ``amount`` units if the bucket holds them."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        if rate < 0 or burst <= 0:
            raise ValueError("a token bucket needs rate >= 0 and burst > 0")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at: float | None = None

    def available(self, now: float) -> float:
        """Units that could be taken at ``now``."""
        self._refill(now)
        return self._tokens

    def take(self, amount: float, now: float) -> bool:
        """Spend ``amount`` units; False (and nothing spent) if fewer are available."""
        self._refill(now)
        if self._tokens < amount:
            return False
        self._tokens -= amount
        return True

    def adjust(self, amount: float) -> None:
        """Give back ``amount`` units (a negative amount takes more, and may leave the
        bucket in debt): for a cost that was estimated when it was taken."""
        self._tokens = min(self.burst, self._tokens + amount)

    def _refill(self, now: float) -> None:
        if self._at is not None and now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        if self._at is None or now > self._at:
            self._at = now
