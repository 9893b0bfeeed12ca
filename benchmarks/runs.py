"""What every benchmark adapter shares: the run directory's manifest, the report files, the date stamp, and the
bridge that lets a benchmark's worker threads call an async ``agents.base.Agent``.

A run directory (``--out``) holds ``run.json``, the manifest of what was run. Running again with the same
``--out`` resumes: :func:`check_run_dir` refuses to mix two different runs in one directory, naming each field
that differs. Reports are written as ``<stem>.json`` and ``<stem>.md`` next to the benchmark's own result files.
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Coroutine


def utc_now() -> str:
    """The date stamp of reports and manifests: UTC, ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_run_dir(out: Path, manifest: dict[str, Any], error: type[Exception]) -> None:
    """Create ``out`` and its ``run.json`` (``manifest`` plus the creation date), or check that the run already
    there is the same run; raises ``error`` naming every differing field otherwise."""
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "run.json"
    if manifest_path.exists():
        try:
            previous = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise error(f"{manifest_path}: not valid JSON ({exc}); delete it to start this run afresh, or pass "
                        "another --out") from None
        differing = [key for key, value in manifest.items() if previous.get(key) != value]
        if differing:
            raise error(
                f"{manifest_path}: this run directory holds a run with different "
                + ", ".join(f"{key} ({previous.get(key)!r}, now {manifest[key]!r})" for key in differing)
                + "; resume only the same run there, or pass another --out"
            )
        return
    manifest_path.write_text(json.dumps({**manifest, "created": utc_now()}, indent=2) + "\n")


def write_report(out: Path, stem: str, data: dict[str, Any], markdown: str) -> None:
    """Write ``<stem>.json`` and ``<stem>.md`` into the run directory."""
    (out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown)


class AsyncBridge:
    """One event loop in a daemon thread; a benchmark's worker threads submit coroutines to it and wait."""

    def __init__(self, name: str = "cm2-bench-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
