"""Requests-per-minute and tokens-per-minute limiting: a token bucket that refills continuously.

Contract: ``await bucket.acquire(amount)`` returns once ``amount`` units are available and takes them; the bucket
holds at most ``per_minute`` units and refills at ``per_minute / 60`` units per second, so a fresh bucket allows a
burst of one minute's budget, then the steady rate. ``adjust(delta)`` charges (positive) or refunds (negative)
units after the fact (tokens-per-minute: the estimate taken before a request is corrected by the server's usage);
the level may go negative, which delays later acquirers. Used from one event loop, so no lock is needed: nothing
awaits between the check and the debit.
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, per_minute: float) -> None:
        if per_minute <= 0:
            raise ValueError(f"a per-minute limit must be positive, got {per_minute}")
        self.capacity = float(per_minute)
        self.rate_per_s = self.capacity / 60.0
        self.level = self.capacity
        self._updated = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate_per_s)
        self._updated = now

    async def acquire(self, amount: float = 1.0) -> None:
        amount = min(float(amount), self.capacity)  # a request larger than the budget still runs, at full cost
        while True:
            self._refill()
            if self.level >= amount:
                self.level -= amount
                return
            await asyncio.sleep((amount - self.level) / self.rate_per_s)

    def adjust(self, delta: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level - delta)
