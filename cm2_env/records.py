"""Plain-dict helpers for JSON records: one way to flatten nested dicts, and one way to resume an append-only
JSONL file (rollouts, annotation, benchmark results)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")


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


def resume_jsonl(path: Path, accept: Callable[[Any], T | None]) -> list[T]:
    """Read back an append-only JSONL file that a run writes as it goes, to resume the run: each line is decoded
    and passed to ``accept``, which returns what to keep or None to drop the line (a failed record, to be run
    again); a line that is not JSON or that ``accept`` rejects by raising ValueError, KeyError or TypeError (a
    line cut off by a kill) is dropped too. When anything was dropped the file is rewritten, atomically, with the
    kept lines only (also when the last line lacks its newline), so lines appended later start on their own line
    and nothing dropped is read twice."""
    if not path.exists():
        return []
    kept: list[T] = []
    lines: list[str] = []
    text = path.read_text(encoding="utf-8", errors="replace")
    dropped = bool(text) and not text.endswith("\n")  # killed between a record and its newline: end the line
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            value = accept(json.loads(line))
        except (ValueError, KeyError, TypeError):
            value = None
        if value is None:
            dropped = True
            continue
        kept.append(value)
        lines.append(line)
    if dropped:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        temporary.replace(path)
    return kept
