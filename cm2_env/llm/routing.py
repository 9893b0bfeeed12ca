"""Routing requests over the endpoints that serve one model: least requests in flight, capped, failure-aware.

Contract: ``await pool.acquire()`` returns the endpoint to send the next request to and counts it in flight;
``pool.release(endpoint, failed=...)`` must follow (in a ``finally``). Rules:

- each endpoint has at most ``max_concurrency`` requests in flight; when every usable endpoint is full, callers
  wait in FIFO order for a slot, so a burst is dispatched as capacity frees up (a fast endpoint gets more work
  than a slow one, instead of a split decided when the burst arrived);
- among endpoints with a free slot, the one with the fewest in flight wins; ties rotate, so sequential calls
  alternate;
- an endpoint whose last attempt failed (connection error, timeout, 429, 5xx) cools down for
  ``0.25 s * 2**(consecutive failures - 1)`` (at most ``max_cooldown_s``) and is used only when every endpoint
  is cooling down — a dead endpoint that fails instantly would otherwise always look the least loaded;
- circuit breaker: an endpoint that could not be reached ``breaker_failures`` times in a row (connection
  errors, timeouts, 502/503/504) and has not answered for ``breaker_window_s`` seconds (or never) is *down*
  while it cools down -- a live server that fails some requests keeps answering others, so it never looks down.
  When every endpoint is down, :meth:`all_down` is true and callers fail at once instead of retrying; when a
  cooldown ends, the next request probes the endpoint again (one success closes the circuit).

Single event loop, no locks: nothing awaits between choosing an endpoint and counting it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

BASE_COOLDOWN_S = 0.25


class Endpoint:
    """One base URL: its SDK clients, requests in flight, health and whether it accepts ``response_format``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sdks: list[Any] = []
        self._next_sdk = 0
        self.in_flight = 0
        self.consecutive_failures = 0
        self.unreachable_streak = 0  # attempts in a row that could not reach the server (circuit breaker)
        self.last_answer = float("-inf")  # monotonic time of the last attempt the server answered
        self.cooldown_until = 0.0
        self.structured_output = True

    def next_sdk(self) -> Any:
        """The endpoint's SDK clients in rotation (each has its own small HTTP connection pool)."""
        self._next_sdk = (self._next_sdk + 1) % len(self.sdks)
        return self.sdks[self._next_sdk]

    def __repr__(self) -> str:
        return f"Endpoint({self.url!r}, in_flight={self.in_flight})"


class EndpointPool:
    def __init__(self, urls: tuple[str, ...] | list[str], max_concurrency: int, max_cooldown_s: float = 30.0):
        self.endpoints = [Endpoint(url) for url in urls]
        self.max_concurrency = max_concurrency
        self.max_cooldown_s = max_cooldown_s
        self._rotation = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def reset(self) -> None:
        """Forget in-flight counts and waiters (the pool moved to a new event loop)."""
        self._waiters.clear()
        for endpoint in self.endpoints:
            endpoint.in_flight = 0

    def _choose(self) -> Endpoint | None:
        endpoints = self.endpoints
        count = len(endpoints)
        now = time.monotonic()
        start = self._rotation
        best: Endpoint | None = None
        best_cooling: Endpoint | None = None
        for offset in range(count):
            candidate = endpoints[(start + offset) % count]
            if candidate.in_flight >= self.max_concurrency:
                continue
            if candidate.cooldown_until > now:
                if best_cooling is None or candidate.in_flight < best_cooling.in_flight:
                    best_cooling = candidate
            elif best is None or candidate.in_flight < best.in_flight:
                best = candidate
        if best is None and best_cooling is not None:
            if any(e.cooldown_until <= now for e in endpoints):
                return None  # a healthy endpoint exists but is full: wait for it rather than use a failing one
            best = best_cooling
        if best is not None:
            self._rotation = (start + 1) % count
        return best

    async def acquire(self) -> Endpoint:
        if not self._waiters:  # nobody queued ahead of us
            endpoint = self._choose()
            if endpoint is not None:
                endpoint.in_flight += 1
                return endpoint
        while True:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # we were handed a wake-up we will not use: pass it on
                else:
                    self._waiters.remove(waiter)
                raise
            endpoint = self._choose()
            if endpoint is not None:
                endpoint.in_flight += 1
                if self._has_free_slot():
                    self._wake_one()  # several slots may have freed at once
                return endpoint
            # Woken, but only cooling endpoints are free while a healthy one is full: wait for the next release.

    def _has_free_slot(self) -> bool:
        return any(e.in_flight < self.max_concurrency for e in self.endpoints)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def all_down(self, breaker_failures: int, breaker_window_s: float) -> bool:
        """Every endpoint is down: unreachable ``breaker_failures`` times in a row, silent for
        ``breaker_window_s`` seconds, and still cooling down."""
        now = time.monotonic()
        return all(e.unreachable_streak >= breaker_failures and now - e.last_answer >= breaker_window_s
                   and e.cooldown_until > now for e in self.endpoints)

    def release(self, endpoint: Endpoint, *, failed: bool, unreachable: bool = False) -> None:
        endpoint.in_flight -= 1
        endpoint.unreachable_streak = endpoint.unreachable_streak + 1 if unreachable else 0
        if not unreachable:
            endpoint.last_answer = time.monotonic()
        if failed:
            endpoint.consecutive_failures += 1
            cooldown = BASE_COOLDOWN_S * 2 ** min(endpoint.consecutive_failures - 1, 16)
            endpoint.cooldown_until = time.monotonic() + min(cooldown, self.max_cooldown_s)
        else:
            endpoint.consecutive_failures = 0
            endpoint.cooldown_until = 0.0
        self._wake_one()
