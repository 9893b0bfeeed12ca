"""``extract_json``: the project's only "JSON out of LLM text" parser.

Contract: ``extract_json(text)`` returns the first JSON value it can recover from ``text`` or ``None``; it never
raises, whatever the input (garbage, huge, deeply nested, not a string). Recovery order:

1. the whole text parsed as JSON, once reasoning is dropped: closed ``<think>...</think>`` blocks; a text that
   opens with an unclosed ``<think>`` is all reasoning (a model cut off mid-thought has given no answer: None);
   a text that does not start with JSON but holds a ``</think>`` keeps what follows the last one (templates that
   open the block in the prompt);
2. the body of each Markdown code fence (```` ```json ... ``` ```` or a bare fence), in order;
3. the first ``{...}`` or ``[...]`` that parses, scanning left to right (prose before and after is ignored);
4. steps 2-3 again with trailing commas before ``}``/``]`` removed (a common LLM slip).

Objects and arrays are preferred over scalars found inside prose: in step 3 only ``{`` / ``[`` start a candidate.
Work is bounded (input capped at ``MAX_CHARS``, at most ``MAX_CANDIDATES`` start positions tried), so adversarial
input cannot make it slow.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_CHARS = 1_000_000
MAX_CANDIDATES = 256

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n?(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_DECODER = json.JSONDecoder()
_NOT_FOUND = object()


def _loads(text: str) -> Any:
    """``json.loads`` that returns ``_NOT_FOUND`` instead of raising (deep nesting raises RecursionError)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _NOT_FOUND


def _first_container(text: str) -> Any:
    """The first ``{...}``/``[...]`` in ``text`` that decodes, or ``_NOT_FOUND``."""
    tried = 0
    position = 0
    while tried < MAX_CANDIDATES:
        starts = [i for i in (text.find("{", position), text.find("[", position)) if i >= 0]
        if not starts:
            return _NOT_FOUND
        start = min(starts)
        tried += 1
        try:
            value, _end = _DECODER.raw_decode(text, start)
            return value
        except (ValueError, RecursionError):
            position = start + 1
    return _NOT_FOUND


def _search(text: str) -> Any:
    for match in _FENCE.finditer(text):
        value = _loads(match.group(2).strip())
        if value is not _NOT_FOUND:
            return value
    return _first_container(text)


def _without_reasoning(text: str) -> str:
    text = _THINK.sub("", text)
    head = text.lstrip()
    if head.startswith("<think>"):
        return ""
    if "</think>" in text and not head.startswith(("{", "[")):
        return text.rsplit("</think>", 1)[1]
    return text


def extract_json(text: Any) -> Any:
    """Return the first JSON value recoverable from ``text`` (see the module docstring), else ``None``."""
    try:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", errors="replace")
        if not isinstance(text, str):
            return None
        text = _without_reasoning(text[:MAX_CHARS]).strip()
        if not text:
            return None
        for candidate_text in (text, _TRAILING_COMMA.sub(r"\1", text)):
            value = _loads(candidate_text)
            if value is _NOT_FOUND:
                value = _search(candidate_text)
            if value is not _NOT_FOUND:
                return value
        return None
    except Exception:  # the contract is "never raises": a bug here must not take a rollout down
        return None
