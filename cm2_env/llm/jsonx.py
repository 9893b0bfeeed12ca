"""``extract_json``: the project's only "JSON out of LLM text" parser.

Contract: ``extract_json(text)`` returns the first JSON value it can recover from ``text`` or ``None``; it never
raises, whatever the input (garbage, huge, deeply nested, not a string). Recovery order:

1. the whole text parsed as JSON as it is, or else once reasoning is dropped: closed ``<think>...</think>`` blocks; a text that
   opens with an unclosed ``<think>`` is all reasoning (a model cut off mid-thought has given no answer: None);
   a text that does not start with JSON but holds a ``</think>`` keeps what follows the first one (templates that
   open the block in the prompt) -- unless nothing can be recovered there and a JSON container spans that
   ``</think>`` (it was inside the answer's own JSON, e.g. a key);
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


def _inside(position: int, spans: list[tuple[int, int]]) -> bool:
    return any(start <= position < end for start, end in spans)


def _first_container(text: str, spans: list[tuple[int, int]]) -> Any:
    """The first ``{...}``/``[...]`` of ``text`` that starts outside the reasoning ``spans`` and decodes, or
    ``_NOT_FOUND``. Decoding runs on the text as it is, so a JSON string that mentions ``<think>`` stays whole."""
    tried = 0
    position = 0
    while tried < MAX_CANDIDATES:
        starts = [i for i in (text.find("{", position), text.find("[", position)) if i >= 0]
        if not starts:
            return _NOT_FOUND
        start = min(starts)
        position = start + 1
        if _inside(start, spans):
            continue
        tried += 1
        try:
            value, _end = _DECODER.raw_decode(text, start)
            return value
        except (ValueError, RecursionError):
            continue
    return _NOT_FOUND


def _search(text: str, spans: list[tuple[int, int]]) -> Any:
    for match in _FENCE.finditer(text):
        if _inside(match.start(), spans):
            continue
        value = _loads(match.group(2).strip())
        if value is not _NOT_FOUND:
            return value
    return _first_container(text, spans)


def _answer_region(text: str) -> tuple[str, list[tuple[int, int]]]:
    """``(text, reasoning spans)``: the part of ``text`` that can hold the answer, and the closed ``<think>``
    blocks inside it, which are never read as the answer."""
    head = text.lstrip()
    if head.startswith("<think>") and "</think>" not in head:
        return "", []  # cut off mid-thought: no answer yet
    if "</think>" in text and "<think>" not in text.split("</think>", 1)[0] and not head.startswith(("{", "[")):
        text = text.split("</think>", 1)[1]  # the template opened the block in the prompt
    return text, [match.span() for match in _THINK.finditer(text)]


def extract_json(text: Any) -> Any:
    """Return the first JSON value recoverable from ``text`` (see the module docstring), else ``None``."""
    try:
        return recover_json(text)
    except Exception:  # the contract is "never raises": a bug here must not take a rollout down
        return None


def recover_json(text: Any) -> Any:
    """:func:`extract_json` without its safety net: what the tests drive, so that a bug shows as an exception."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return None
    whole = _loads(text[:MAX_CHARS].strip())
    if whole is not _NOT_FOUND:
        return whole  # a JSON document, even one whose strings mention <think>
    capped = text[:MAX_CHARS]
    region, spans = _answer_region(capped)
    value = _recover_in(region, spans)
    if value is _NOT_FOUND and region != capped:
        value = _container_across(capped, capped.index("</think>"))
    return None if value is _NOT_FOUND else value


def _container_across(text: str, cut: int) -> Any:
    """A ``{...}``/``[...]`` that starts before ``cut`` and ends after it: the ``</think>`` at ``cut`` was inside
    the answer's own JSON (a key or a string), not the end of a reasoning block. ``_NOT_FOUND`` otherwise, so
    JSON drafted in the reasoning is never taken for the answer."""
    position, tried = 0, 0
    while tried < MAX_CANDIDATES:
        starts = [i for i in (text.find("{", position, cut), text.find("[", position, cut)) if i >= 0]
        if not starts:
            return _NOT_FOUND
        start = min(starts)
        position, tried = start + 1, tried + 1
        try:
            value, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            continue
        if end > cut:
            return value
    return _NOT_FOUND


def _recover_in(text: str, spans: list[tuple[int, int]]) -> Any:
    """Steps 1-4 of the module docstring on ``text`` (reasoning ``spans`` excluded); ``_NOT_FOUND`` if none."""
    if not text.strip():
        return _NOT_FOUND
    if spans:
        value = _loads(_THINK.sub("", text).strip())
        if value is not _NOT_FOUND:
            return value
    for candidate_text in (text, _TRAILING_COMMA.sub(r"\1", text)):
        if candidate_text is not text:
            spans = [match.span() for match in _THINK.finditer(candidate_text)]
            value = _loads(candidate_text.strip())
            if value is not _NOT_FOUND:
                return value
        value = _search(candidate_text, spans)
        if value is not _NOT_FOUND:
            return value
    return _NOT_FOUND
