"""Two small text helpers every part of cm2 shares: package prompt files, and shortening long text visibly.

- :func:`package_prompt` reads ``PACKAGE/prompts/NAME.txt`` (package data, so an installed wheel has it) as a
  ``string.Template`` with ``$field`` placeholders; cached.
- :func:`shorten` cuts a text to ``limit`` characters and says so: ``[... N characters cut ...]`` replaces what
  is gone, so neither a model nor a reader mistakes a cut text for a whole one. ``keep_end`` keeps the text's
  start and end (two thirds and one third of the room), for texts whose last part matters (tool output).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from string import Template


@lru_cache(maxsize=None)
def package_prompt(package: str, name: str) -> Template:
    """The prompt file ``prompts/NAME.txt`` of ``package`` (e.g. ``"cm2_env.judge"``) as a Template."""
    return Template((resources.files(package) / "prompts" / f"{name}.txt").read_text(encoding="utf-8"))


def shorten(text: str, limit: int | None, *, keep_end: bool = False) -> str:
    """``text``, or when longer than ``limit`` characters a cut version with a marker (module docstring)."""
    if limit is None or len(text) <= limit:
        return text
    marker = f" [... {len(text) - limit} characters cut ...] "
    if not keep_end:
        return text[:limit] + marker.rstrip()
    head = (limit * 2) // 3
    tail = limit - head
    return text[:head] + marker + (text[-tail:] if tail else "")
