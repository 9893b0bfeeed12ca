"""A persistent response cache: sqlite, keyed by a hash of the full chat request.

Contract: ``request_key(request)`` is the SHA-256 of the canonical JSON of everything that shapes the answer
(model, messages, tools, response_format and every sampling parameter) and nothing else (not the endpoint URL,
not the API key). ``ResponseCache(path).get(key)`` returns the stored completion body (a dict) or ``None``;
``put(key, body)`` stores it (last write wins). The client consults it for calls at temperature 0, or for every
call when ``cache_any_temperature=True``, so evaluations and tests replay deterministically without contacting
the server.

Concurrency: one sqlite connection per cache object guarded by a lock (safe across threads and asyncio tasks), WAL
journal and a busy timeout (safe across processes sharing the file). Lookups take tens of microseconds, so they
run inline on the event loop.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, body TEXT NOT NULL, created REAL NOT NULL)"


def request_key(request: dict[str, Any]) -> str:
    """SHA-256 hex digest of the canonical JSON of ``request`` (keys sorted, so dict order does not matter)."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """The sqlite-backed cache at ``path`` (created with its parent folder if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(_SCHEMA)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute("SELECT body FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            body = json.loads(row[0])
        except ValueError:  # a torn or foreign row: treat as a miss, the next put overwrites it
            return None
        return body if isinstance(body, dict) else None

    def put(self, key: str, body: dict[str, Any]) -> None:
        text = json.dumps(body, ensure_ascii=False)
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO responses (key, body, created) VALUES (?, ?, ?)",
                               (key, text, time.time()))

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"
