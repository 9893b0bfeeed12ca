"""Headless Chromium for checking `cm2 view` reports (the browser tests and benchmarks/perf/view_report.py).

We drive the system's Chromium (Debian's `chromium`, or $CM2_CHROMIUM) through Playwright and never download a
browser. The flags suit a root user on a machine without a network: no sandbox, no GPU, no background connections.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
MISSING = "no Chromium: install Debian's `chromium` package (.ci/run does) or set CM2_CHROMIUM to its path"


def chromium_path() -> str | None:
    """$CM2_CHROMIUM, else `chromium` or `chromium-browser` on PATH, else None."""
    return os.environ.get("CM2_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def launch(playwright: Any, path: str) -> Any:
    """A headless browser from Playwright's sync API object, running the Chromium at ``path``."""
    return playwright.chromium.launch(executable_path=path, args=FLAGS)
