"""Plain-dict helpers for JSON records (summaries, metrics): one way to flatten nested dicts."""

from __future__ import annotations

from typing import Any, Mapping


def flatten(record: Mapping[str, Any], separator: str = "/", prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}`` (keys joined with ``separator``); non-dict values are kept as they are."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, separator, name + separator))
        else:
            out[name] = value
    return out
