"""Tool-call parsing and rendering: the one place that turns policy output into calls and calls back into text.

Contract of :func:`parse`:

- Input: the policy's text output (Hermes/Qwen style) and, optionally, OpenAI ``tool_calls`` returned next to
  it by an endpoint. ``None`` text counts as ``""`` (OpenAI messages with calls often carry ``content: null``).
- Output: a :class:`ParsedAction` with the reasoning (``<think>`` blocks, split by
  :func:`cm2_env.data.turns.split_think`), the visible reply with the ``<tool_call>`` blocks removed, the
  decoded calls and structured errors. It never raises: anything malformed (including a non-string input)
  becomes a :class:`ParseError`, so the environment can answer it with an error tool response.
- CM2 rule: calls written only inside ``<think>`` are reasoning, not calls. They are ignored (no call, no error).
  An unclosed ``<think>`` hides everything after it, calls included (``split_think`` treats it as thinking).
- A block body is one JSON object or a JSON list of objects. An object is ``{"name": ..., "arguments": ...}``
  (``parameters`` is accepted for ``arguments``; an OpenAI-shaped ``{"function": {...}}`` also works); arguments
  may be an object, a JSON string holding one, or absent (= ``{}``). A Markdown code fence around the body is
  tolerated. JSON is decoded with the standard ``json`` module only; ``NaN``/``Infinity`` are rejected.
- Unclosed blocks, best effort: a block ends at ``</tool_call>``, or else at the next ``<tool_call>`` or at the
  end of the text. An unclosed body that still decodes to valid calls is accepted without an error (generation
  often stops at the ``</tool_call>`` stop string); one that does not decode gives an ``unclosed_block`` error.
- Calls given via ``tool_calls=`` come first, then the calls found in the text, each in order.

Renderers go the other way: :func:`render_hermes` writes the text a Qwen/Hermes model emits, :func:`render_openai`
the OpenAI ``tool_calls`` list, and :func:`to_assistant_message` the OpenAI assistant message the environment
records in its transcript.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from cm2_env.data.turns import split_think
from cm2_env.text import shorten

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
# A literal tag inside a JSON string would end or split the block; render_hermes escapes "<" then (see there).
_TAG_LITERALS = ("<tool_call>", "</tool_call>", "<think>", "</think>")
_SNIPPET_CHARS = 160

#: The kinds of :class:`ParseError`, with what each means.
ERROR_KINDS: dict[str, str] = {
    "not_text": "the action is not a string",
    "invalid_json": "a <tool_call> body is not valid JSON",
    "unclosed_block": "a <tool_call> block has no </tool_call> and its body is not valid JSON",
    "unopened_block": "a </tool_call> appears without a matching <tool_call>",
    "empty_block": "a <tool_call> block (or its JSON list) holds no call",
    "not_an_object": "a call is not a JSON object (or tool_calls= is not a list)",
    "missing_name": "a call has no non-empty string 'name'",
    "bad_arguments": "a call's arguments are not a JSON object (nor a JSON string holding one)",
    "internal": "an unexpected failure inside the parser (a bug; the input is reported as unparseable)",
}


@dataclass(frozen=True)
class ParsedCall:
    """One decoded tool call.

    ``arguments`` is the decoded JSON object; ``arguments_json`` is its canonical form (:func:`canonical_json`:
    sorted keys, compact, non-ASCII kept), which is what exact-match replay compares. ``id`` is the call id the
    policy or endpoint gave, or ``None``.
    """

    name: str
    arguments: dict[str, Any]
    arguments_json: str
    id: str | None = None


@dataclass(frozen=True)
class ParseError:
    """A structured parse failure: ``kind`` (a key of :data:`ERROR_KINDS`), a human message that says what was
    wrong and how to write it instead (it can be sent back to the policy), and the offending ``snippet``."""

    kind: str
    message: str
    snippet: str = ""


@dataclass(frozen=True)
class ParsedAction:
    """One agent action, parsed. ``thinking`` and ``content`` are stripped strings."""

    thinking: str
    content: str
    calls: list[ParsedCall] = field(default_factory=list)
    errors: list[ParseError] = field(default_factory=list)

    @property
    def is_final_reply(self) -> bool:
        """True when the action has no calls and no call-parse errors: the reply that ends a turn."""
        return not self.calls and not self.errors


def canonical_json(value: Any) -> str:
    """Canonical JSON text: sorted keys, ``(",", ":")`` separators, non-ASCII kept, NaN/Infinity refused.

    Raises ``TypeError``/``ValueError`` for values JSON cannot represent.
    """
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# --- parsing --------------------------------------------------------------------------------------------


def parse(text: Any, *, tool_calls: Any = None) -> ParsedAction:
    """Parse one policy action (see the module docstring for the contract). Never raises."""
    try:
        return _parse(text, tool_calls)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"; report it as data instead
        return ParsedAction("", "", [], [ParseError("internal", f"parser failure: {type(exc).__name__}: {exc}")])


def _parse(text: Any, tool_calls: Any) -> ParsedAction:
    calls: list[ParsedCall] = []
    errors: list[ParseError] = []
    if tool_calls is not None:
        _collect_openai_calls(tool_calls, calls, errors)
    if text is None:
        text = ""
    if not isinstance(text, str):
        errors.append(ParseError("not_text", f"the action must be a string, got {type(text).__name__}",
                                 _snippet(repr(text))))
        return ParsedAction("", "", calls, errors)
    thinking, visible = split_think(text)
    if OPEN_TAG not in visible and CLOSE_TAG not in visible:  # the common final-reply fast path
        return ParsedAction(thinking, visible, calls, errors)
    content = _collect_text_calls(visible, calls, errors)
    return ParsedAction(thinking, content, calls, errors)


def _collect_text_calls(visible: str, calls: list[ParsedCall], errors: list[ParseError]) -> str:
    """Decode the ``<tool_call>`` blocks of ``visible`` into ``calls``/``errors``; return the text around them."""
    outside: list[str] = []
    pos = 0
    close_at = -2  # cached position of the next </tool_call>; -2 = not searched yet, -1 = none left
    while True:
        open_at = visible.find(OPEN_TAG, pos)
        segment = visible[pos:] if open_at < 0 else visible[pos:open_at]
        if CLOSE_TAG in segment:
            errors.append(ParseError("unopened_block", "found </tool_call> without a preceding <tool_call>; "
                                     "wrap each call as <tool_call>{...}</tool_call>", _snippet(segment)))
        outside.append(segment)
        if open_at < 0:
            break
        body_start = open_at + len(OPEN_TAG)
        if close_at != -1 and close_at < body_start:
            close_at = visible.find(CLOSE_TAG, body_start)
        next_open = visible.find(OPEN_TAG, body_start)
        if close_at >= 0 and (next_open < 0 or close_at < next_open):
            body, closed, pos = visible[body_start:close_at], True, close_at + len(CLOSE_TAG)
        else:
            end = next_open if next_open >= 0 else len(visible)
            body, closed, pos = visible[body_start:end], False, end
        _decode_block(body, closed, calls, errors)
    return "\n".join(s for s in (part.strip() for part in outside) if s)


def _decode_block(body: str, closed: bool, calls: list[ParsedCall], errors: list[ParseError]) -> None:
    """Decode one block body (a JSON object or a list of them) into calls, or record why it cannot be."""
    source = _strip_code_fence(body.strip())
    if not source:
        kind = "empty_block" if closed else "unclosed_block"
        errors.append(ParseError(kind, 'empty <tool_call> block; write <tool_call>{"name": ..., "arguments": {...}}'
                                 "</tool_call>", _snippet(body)))
        return
    try:
        value = _decode_json(source)
    except (ValueError, RecursionError) as exc:
        if closed:
            errors.append(ParseError("invalid_json", f"<tool_call> body is not valid JSON ({exc}); write one JSON "
                                     'object {"name": ..., "arguments": {...}}', _snippet(source)))
        else:
            errors.append(ParseError("unclosed_block", f"<tool_call> block is not closed and its body is not valid "
                                     f"JSON ({exc}); end each call with </tool_call>", _snippet(source)))
        return
    items = value if isinstance(value, list) else [value]
    if not items:
        errors.append(ParseError("empty_block", "the <tool_call> body is an empty list; give at least one call",
                                 _snippet(source)))
    for item in items:
        _append_call(item, calls, errors)


def _collect_openai_calls(tool_calls: Any, calls: list[ParsedCall], errors: list[ParseError]) -> None:
    if not isinstance(tool_calls, (list, tuple)):
        errors.append(ParseError("not_an_object", f"tool_calls must be a list of calls, got "
                                 f"{type(tool_calls).__name__}", _snippet(repr(tool_calls))))
        return
    for item in tool_calls:
        if not isinstance(item, Mapping) and hasattr(item, "model_dump"):  # pydantic ToolCall / OpenAI SDK objects
            item = item.model_dump()
        _append_call(item, calls, errors)


def _append_call(item: Any, calls: list[ParsedCall], errors: list[ParseError]) -> None:
    """Normalise one call object (Hermes ``{"name", "arguments"|"parameters"}`` or OpenAI ``{"function": ...}``)."""
    if not isinstance(item, Mapping):
        errors.append(ParseError("not_an_object", f'a call must be a JSON object {{"name": ..., "arguments": '
                                 f"{{...}}}}, got {type(item).__name__}", _snippet(_dump_for_snippet(item))))
        return
    function = item.get("function")
    source = function if isinstance(function, Mapping) and "name" not in item else item
    name = source.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.append(ParseError("missing_name", "the call has no non-empty string 'name'; write "
                                 '{"name": "<tool name>", "arguments": {...}}', _snippet(_dump_for_snippet(item))))
        return
    raw = source["arguments"] if "arguments" in source else source.get("parameters")
    arguments, problem = _decode_arguments(raw)
    arguments_json = None
    if arguments is not None:
        try:
            arguments_json = canonical_json(arguments)
        except (TypeError, ValueError, RecursionError) as exc:
            problem = f"not representable as JSON ({exc})"
    if arguments is None or arguments_json is None:
        errors.append(ParseError("bad_arguments", f"arguments of {name!r} {problem}; give a JSON object such as "
                                 '{"key": "value"}', _snippet(_dump_for_snippet(raw))))
        return
    call_id = item.get("id")
    calls.append(ParsedCall(name, arguments, arguments_json, call_id if isinstance(call_id, str) else None))


def _decode_arguments(raw: Any) -> tuple[dict[str, Any] | None, str]:
    """``(arguments, "")`` or ``(None, what is wrong)``. Absent/empty arguments mean ``{}``."""
    if raw is None:
        return {}, ""
    if isinstance(raw, Mapping):
        return dict(raw), ""
    if isinstance(raw, str):
        if not raw.strip():
            return {}, ""
        try:
            value = _decode_json(_strip_code_fence(raw.strip()))
        except (ValueError, RecursionError) as exc:
            return None, f"are a string that is not valid JSON ({exc})"
        if isinstance(value, dict):
            return value, ""
        return None, f"decode to a JSON {type(value).__name__}, not an object"
    return None, f"are a {type(raw).__name__}, not an object"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _decode_json(source: str) -> Any:
    return _DECODER.decode(source)


def _strip_code_fence(source: str) -> str:
    """Remove a Markdown fence (```json ... ```) around ``source``; models sometimes wrap the call body in one."""
    if not source.startswith("```"):
        return source
    newline = source.find("\n")
    inner = source[newline + 1:] if newline >= 0 else source[3:]
    inner = inner.rstrip()
    if inner.endswith("```"):
        inner = inner[:-3]
    return inner.strip()


def _snippet(text: str) -> str:
    return shorten(text, _SNIPPET_CHARS)


def _dump_for_snippet(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)[: _SNIPPET_CHARS + 1]
    except (TypeError, ValueError, RecursionError):
        return repr(value)[: _SNIPPET_CHARS + 1]


# --- rendering ------------------------------------------------------------------------------------------

CallLike = ParsedCall | Mapping[str, Any]


def render_hermes(calls: Iterable[CallLike], content: str = "", thinking: str = "") -> str:
    """The text a Qwen/Hermes model emits for this action.

    ``<think>\\n{thinking}\\n</think>\\n\\n`` when ``thinking`` is non-empty, then ``content``, then one
    ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` per call, separated by newlines. Calls may be
    :class:`ParsedCall` objects or mappings in either call shape :func:`parse` accepts. If a call's JSON would
    contain a literal tag (e.g. an argument string ``"</tool_call>"``), its ``<`` characters are written as the
    JSON escape ``\\u003c`` so that the text parses back to the same call. ``content`` and ``thinking`` are written
    verbatim: they must not contain those tags themselves. Raises ``ValueError`` for a call that is not valid.
    """
    parts = [content.strip()] if content and content.strip() else []
    for call in _as_parsed_calls(calls):
        body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
        if any(tag in body for tag in _TAG_LITERALS):
            body = body.replace("<", "\\u003c")  # "<" occurs only inside JSON strings, where the escape is exact
        parts.append(f"{OPEN_TAG}\n{body}\n{CLOSE_TAG}")
    text = "\n".join(parts)
    if thinking and thinking.strip():
        text = f"<think>\n{thinking.strip()}\n</think>\n\n{text}"
    return text


def render_message_hermes(message: Any) -> str:
    """The Hermes text of a recorded assistant message (a :class:`~cm2_env.data.models.Message` or an OpenAI
    message dict): its reasoning, reply and calls as :func:`render_hermes` writes them. This is how reference
    actions are replayed as policy output."""
    if hasattr(message, "model_dump"):
        message = message.model_dump(mode="json", exclude_none=True)
    thinking, reply = split_think(message.get("content") or "")
    calls = [{"name": call["function"]["name"], "arguments": call["function"].get("arguments", "{}"),
              "id": call.get("id")} for call in message.get("tool_calls") or []]
    return render_hermes(calls, content=reply, thinking=thinking)


def render_openai(calls: Iterable[CallLike]) -> list[dict[str, Any]]:
    """OpenAI ``tool_calls``: ``{"id", "type": "function", "function": {"name", "arguments": JSON string}}``.

    The id is the call's own id, else ``call_{i}`` (i = 0-based position), so rendering is deterministic.
    Raises ``ValueError`` for a call that is not valid.
    """
    return [
        {
            "id": call.id or f"call_{i}",
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
        }
        for i, call in enumerate(_as_parsed_calls(calls))
    ]


def to_assistant_message(parsed: ParsedAction) -> dict[str, Any]:
    """The OpenAI assistant message recording ``parsed`` in a transcript.

    ``content`` is the visible reply, prefixed by ``<think>\\n{thinking}\\n</think>\\n\\n`` when there was
    reasoning (so :func:`~cm2_env.data.turns.split_think` recovers both); ``tool_calls`` (see
    :func:`render_openai`) is present only when there are calls. Parse errors are not represented: the caller
    decides how to answer them.
    """
    content = parsed.content
    if parsed.thinking:
        content = f"<think>\n{parsed.thinking}\n</think>\n\n{content}".rstrip()
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if parsed.calls:
        message["tool_calls"] = render_openai(parsed.calls)
    return message


def _as_parsed_calls(calls: Iterable[CallLike]) -> list[ParsedCall]:
    out: list[ParsedCall] = []
    for call in calls:
        if isinstance(call, ParsedCall):
            out.append(call)
            continue
        found: list[ParsedCall] = []
        errors: list[ParseError] = []
        _append_call(call, found, errors)
        if errors:
            raise ValueError(f"cannot render call {call!r}: {errors[0].message}")
        out.extend(found)
    return out
