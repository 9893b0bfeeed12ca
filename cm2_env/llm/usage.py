"""Usage accounting per role (policy / simulator / judge / annotator / ...), as a plain dict for logs.

A ``UsageTracker`` is shared by every client that should be summed together (pass ``usage=tracker`` to
``make_client``; by default each client has its own). It is updated from the event loop thread only, so it needs
no lock. ``as_dict()`` returns, per role::

    {"calls": int,            # chat() calls, including cache hits
     "cache_hits": int,       # calls answered from the response cache (no request sent)
     "requests": int,         # HTTP attempts sent
     "retries": int,          # attempts after the first one of a call
     "failures": int,         # calls that raised LLMError
     "circuit_open": int,     # of those, calls failed at once because every endpoint was down
     "retry_reasons": {"http_429": int, "http_500": int, "timeout": int, "invalid_response": int, ...},
     "prompt_tokens": int, "completion_tokens": int,   # as reported by the server, successful attempts only
     "latency_s": {"mean", "p50", "p90", "p99", "max"}}  # successful, uncached calls, retries included

No API key, URL credential or message content ever enters this dict.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

LATENCY_WINDOW = 100_000  # percentiles over the most recent calls: bounded memory in long runs


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ascending ``sorted_values`` by linear interpolation; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = q * (len(sorted_values) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass
class RoleUsage:
    """The running totals of one role (see the module docstring for the meaning of each field)."""

    calls: int = 0
    cache_hits: int = 0
    requests: int = 0
    retries: int = 0
    failures: int = 0
    circuit_open: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retry_reasons: Counter = field(default_factory=Counter)
    latencies_s: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def as_dict(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_s)
        mean = sum(ordered) / len(ordered) if ordered else 0.0
        return {
            "calls": self.calls, "cache_hits": self.cache_hits, "requests": self.requests,
            "retries": self.retries, "failures": self.failures, "circuit_open": self.circuit_open,
            "retry_reasons": dict(self.retry_reasons),
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "latency_s": {"mean": mean, "p50": percentile(ordered, 0.5), "p90": percentile(ordered, 0.9),
                          "p99": percentile(ordered, 0.99), "max": ordered[-1] if ordered else 0.0},
        }


class UsageTracker:
    """Per-role ``RoleUsage`` records; ``as_dict()`` is ``{role: {...}}``."""

    def __init__(self) -> None:
        self._roles: dict[str, RoleUsage] = {}

    def role(self, name: str) -> RoleUsage:
        if name not in self._roles:
            self._roles[name] = RoleUsage()
        return self._roles[name]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {name: usage.as_dict() for name, usage in sorted(self._roles.items())}

    def __repr__(self) -> str:
        return f"UsageTracker(roles={sorted(self._roles)})"
