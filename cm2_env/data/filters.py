"""Rule-based data filters of the CM2 recipe (docs/data_pipeline.md; any failure rejects).

Contract: every criterion is a pure function ``(record) -> str | None`` on a *raw* decoded JSON record (so
records the pydantic model would reject can still be filtered, each with a reason). It returns ``None`` when the
record passes and otherwise a short reason naming the offending message or tool. A criterion never raises on
malformed input: what it cannot check, it rejects with a reason.

Criteria (registry :data:`CRITERIA`, in the spec's order):

- ``tool_schema``: tools are function tools with valid names; calls name a known tool; arguments decode to a JSON
  object that has the schema's required keys and no keys outside its ``properties`` (unless the schema allows
  ``additionalProperties``).
- ``role_order``: system first (optional); user -> assistant; assistant -> tool | user; tool -> tool | assistant;
  an assistant message with calls is followed by tool messages and one without is not; ends with an assistant
  reply.
- ``one_response_per_call``: every run of tool messages answers the calls of the assistant message before it,
  one response per call (matching ``tool_call_id`` where both sides carry ids).
- ``no_tool_response_tags``: assistant content holds no ``<tool_response>`` tags (invented tool output).
- ``tool_content_json``: tool contents are valid, non-empty JSON (not ``null``, ``""``, ``{}`` or ``[]``).
- ``unique_tool_names``: no two tools share a name.
- ``non_empty_content``: system, user and tool messages have content; a final assistant message has a
  non-empty user-visible reply.
- ``think_tags``: every assistant content starts with exactly one ``<think>...</think>`` block and holds no
  other think tag. It applies only to records that use reasoning (a think tag anywhere in assistant content),
  or to every record when ``require_think=True``.
"""

from __future__ import annotations

import json
import re
import typing
from typing import Any, Callable, Iterable, Mapping

from cm2_env.data.models import Role
from cm2_env.data.turns import split_think

Record = Any  # a decoded JSON record; normally a dict, but criteria accept anything
Criterion = Callable[..., "str | None"]

_TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
_THINK_BLOCK = re.compile(r"\s*<think>((?:(?!</?think>).)*)</think>((?:(?!</?think>).)*)", re.DOTALL)
_TOOL_RESPONSE_TAG = re.compile(r"</?tool_response>")
_ROLES = typing.get_args(Role)


def _messages(record: Record) -> list | None:
    messages = record.get("messages") if isinstance(record, Mapping) else None
    return messages if isinstance(messages, list) else None


def _calls(message: Any) -> list:
    calls = message.get("tool_calls") if isinstance(message, Mapping) else None
    return calls if isinstance(calls, list) else []


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, Mapping) else None


def _content(message: Any) -> Any:
    content = message.get("content") if isinstance(message, Mapping) else None
    return "" if content is None else content


_NO_MESSAGES = "record has no list of messages"


# --- criteria --------------------------------------------------------------------------------------------


def tool_schema(record: Record) -> str | None:
    """Function tools with valid names; calls to known tools with JSON-object arguments matching the schema."""
    tools = record.get("tools", []) if isinstance(record, Mapping) else None
    if not isinstance(tools, list):
        return "tools is not a list"
    schemas: dict[str, Mapping] = {}
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            return f"tools[{i}] is not a function tool (type must be 'function')"
        function = tool.get("function")
        if not isinstance(function, Mapping):
            return f"tools[{i}] has no function object"
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            return f"tools[{i}] has an invalid function name {name!r}"
        parameters = function.get("parameters", {})
        if not isinstance(parameters, Mapping):
            return f"tool {name!r} has parameters that are not a JSON Schema object"
        schemas[name] = parameters
    messages = _messages(record)
    if messages is None:
        return _NO_MESSAGES
    for i, message in enumerate(messages):
        for k, call in enumerate(_calls(message)):
            reason = _call_reason(call, schemas)
            if reason:
                return f"messages[{i}].tool_calls[{k}]: {reason}"
    return None


def _call_reason(call: Any, schemas: Mapping[str, Mapping]) -> str | None:
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping):
        return "call has no function object"
    name = function.get("name")
    if name not in schemas:
        return f"calls unknown tool {name!r}"
    arguments = function.get("arguments")
    if arguments is None:  # the data model reads a missing or null arguments field as {}
        arguments = {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return f"arguments of {name} are not valid JSON"
    if not isinstance(arguments, Mapping):
        return f"arguments of {name} are not a JSON object"
    schema = schemas[name]
    required = schema.get("required", [])
    missing = [key for key in required if isinstance(key, str) and key not in arguments] if isinstance(required, list) else []
    if missing:
        return f"call to {name} misses required argument(s) {', '.join(missing)}"
    properties = schema.get("properties")
    extra_allowed = schema.get("additionalProperties", False)
    if isinstance(properties, Mapping) and extra_allowed is not True and not isinstance(extra_allowed, Mapping):
        unknown = [key for key in arguments if key not in properties]
        if unknown:
            return f"call to {name} has unknown argument(s) {', '.join(map(str, unknown))}"
    return None


# Allowed successor roles; "assistant+calls" is an assistant message with tool calls.
_NEXT_ROLES: dict[str, tuple[str, ...]] = {
    "system": ("user",),
    "user": ("assistant", "assistant+calls"),
    "assistant+calls": ("tool",),
    "assistant": ("user",),
    "tool": ("tool", "assistant", "assistant+calls"),
}


def role_order(record: Record) -> str | None:
    """System first; user -> assistant -> (tool... -> assistant)* ... -> user; ends with an assistant reply."""
    messages = _messages(record)
    if not messages:
        return _NO_MESSAGES if messages is None else "record has no messages"
    kinds = []
    for i, message in enumerate(messages):
        role = _role(message)
        if role not in _ROLES:
            return f"messages[{i}] has unknown role {role!r}"
        if role == "system" and i != 0:
            return f"messages[{i}] is a system message that is not first"
        kinds.append("assistant+calls" if role == "assistant" and _calls(message) else role)
    if kinds[0] not in ("system", "user"):
        return f"the dialogue starts with a {kinds[0]} message instead of a system or user message"
    for i in range(1, len(kinds)):
        if kinds[i] not in _NEXT_ROLES[kinds[i - 1]]:
            return f"messages[{i}] ({kinds[i]}) may not follow messages[{i - 1}] ({kinds[i - 1]})"
    if kinds[-1] != "assistant":
        return f"the dialogue ends with a {kinds[-1]} message instead of an assistant reply"
    return None


def one_response_per_call(record: Record) -> str | None:
    """Each run of tool messages answers the preceding assistant message's calls, one response per call."""
    messages = _messages(record)
    if messages is None:
        return _NO_MESSAGES
    i = 0
    while i < len(messages):
        if _role(messages[i]) != "tool":
            i += 1
            continue
        start = i
        while i < len(messages) and _role(messages[i]) == "tool":
            i += 1
        responses = messages[start:i]
        calls = _calls(messages[start - 1]) if start > 0 and _role(messages[start - 1]) == "assistant" else []
        if len(responses) != len(calls):
            return f"messages[{start}:{i}] holds {len(responses)} tool response(s) for {len(calls)} call(s)"
        call_ids = [c.get("id") if isinstance(c, Mapping) else None for c in calls]
        answer_ids = [r.get("tool_call_id") for r in responses]
        if all(call_ids) and all(answer_ids) and sorted(map(str, call_ids)) != sorted(map(str, answer_ids)):
            return f"the tool_call_id values of messages[{start}:{i}] do not match the call ids of messages[{start - 1}]"
    return None


def no_tool_response_tags(record: Record) -> str | None:
    """Assistant content never contains ``<tool_response>`` tags (the model inventing tool output)."""
    messages = _messages(record)
    if messages is None:
        return _NO_MESSAGES
    for i, message in enumerate(messages):
        content = _content(message)
        if _role(message) == "assistant" and isinstance(content, str) and _TOOL_RESPONSE_TAG.search(content):
            return f"messages[{i}] (assistant) contains a <tool_response> tag"
    return None


def tool_content_json(record: Record) -> str | None:
    """Every tool message's content is a string of valid JSON that is not empty."""
    messages = _messages(record)
    if messages is None:
        return _NO_MESSAGES
    for i, message in enumerate(messages):
        if _role(message) != "tool":
            continue
        content = _content(message)
        if not isinstance(content, str):
            return f"messages[{i}] (tool) content is not a string"
        try:
            value = json.loads(content)
        except json.JSONDecodeError:
            return f"messages[{i}] (tool) content is not valid JSON"
        if value is None or value == "" or value == {} or value == []:
            return f"messages[{i}] (tool) content is empty JSON ({content.strip()})"
    return None


def unique_tool_names(record: Record) -> str | None:
    """No two tools share a function name."""
    tools = record.get("tools", []) if isinstance(record, Mapping) else None
    if not isinstance(tools, list):
        return "tools is not a list"
    seen = set()
    for tool in tools:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if isinstance(name, str) and name in seen:
            return f"tool name {name!r} is declared more than once"
        seen.add(name if isinstance(name, str) else None)
    return None


def non_empty_content(record: Record) -> str | None:
    """System, user and tool contents are non-blank; a final assistant message has a user-visible reply."""
    messages = _messages(record)
    if messages is None:
        return _NO_MESSAGES
    for i, message in enumerate(messages):
        role, content = _role(message), _content(message)
        if not isinstance(content, str):
            if role == "tool":
                continue  # tool contents that are not strings are tool_content_json's business
            return f"messages[{i}] ({role}) content is not a string"
        if role in ("system", "user", "tool") and not content.strip():
            return f"messages[{i}] ({role}) has empty content"
        if role == "assistant" and not _calls(message) and not split_think(content)[1]:
            return f"messages[{i}] (assistant reply) has no user-visible text"
    return None


def uses_reasoning(record: Record) -> bool:
    """True when some assistant content holds a think tag (the record is reasoning data)."""
    for message in _messages(record) or []:
        content = _content(message)
        if _role(message) == "assistant" and isinstance(content, str) and ("<think>" in content or "</think>" in content):
            return True
    return False


def think_tags(record: Record, require_think: bool = False) -> str | None:
    """Every assistant content starts with one well-formed ``<think>...</think>`` block and has no other tag.

    Records without any think tag pass unless ``require_think`` is set.
    """
    messages = _messages(record)
    if messages is None:
        return _NO_MESSAGES
    if not require_think and not uses_reasoning(record):
        return None
    for i, message in enumerate(messages):
        if _role(message) != "assistant":
            continue
        content = _content(message)
        if not isinstance(content, str):
            return f"messages[{i}] (assistant) content is not a string"
        if _THINK_BLOCK.fullmatch(content):
            continue
        opened, closed = content.count("<think>"), content.count("</think>")
        if opened == 0 and closed == 0:
            return f"messages[{i}] (assistant) has no <think> block"
        if opened != 1 or closed != 1:
            return f"messages[{i}] (assistant) has {opened} <think> and {closed} </think> tag(s); expected one block"
        return f"messages[{i}] (assistant) does not start with its <think>...</think> block"
    return None


#: The criteria by name, in the order of the spec (and of the report).
CRITERIA: dict[str, Criterion] = {
    "tool_schema": tool_schema,
    "role_order": role_order,
    "one_response_per_call": one_response_per_call,
    "no_tool_response_tags": no_tool_response_tags,
    "tool_content_json": tool_content_json,
    "unique_tool_names": unique_tool_names,
    "non_empty_content": non_empty_content,
    "think_tags": think_tags,
}


def rejection_reasons(record: Record, criteria: Iterable[str] | None = None,
                      require_think: bool = False) -> dict[str, str]:
    """``{criterion: reason}`` for every criterion the record fails (empty when it passes all)."""
    reasons = {}
    for name in _check_names(criteria):
        reason = think_tags(record, require_think) if name == "think_tags" else CRITERIA[name](record)
        if reason is not None:
            reasons[name] = reason
    return reasons


def apply_filters(records: Iterable[Record], criteria: Iterable[str] | None = None,
                  require_think: bool = False, examples_per_criterion: int = 5) -> tuple[list, dict]:
    """Keep the records that pass every selected criterion.

    Returns ``(kept, report)``. ``report`` holds ``total``, ``kept`` and ``rejected`` record counts,
    ``criteria``: the number of records each criterion rejects (overlapping: a record failing three criteria
    counts under all three, as in the paper's filter table), the settings, and up to ``examples_per_criterion``
    ``{"index", "id", "reason"}`` examples per criterion (``index`` is 0-based in ``records``).
    """
    names = _check_names(criteria)
    counts = dict.fromkeys(names, 0)
    examples: dict[str, list[dict]] = {name: [] for name in names}
    kept, total = [], 0
    for index, record in enumerate(records):
        total += 1
        reasons = rejection_reasons(record, names, require_think)
        if not reasons:
            kept.append(record)
        for name, reason in reasons.items():
            counts[name] += 1
            if len(examples[name]) < examples_per_criterion:
                rid = record.get("id", record.get("uuid")) if isinstance(record, Mapping) else None
                examples[name].append({"index": index, "id": rid, "reason": reason})
    report = {
        "total": total,
        "kept": len(kept),
        "rejected": total - len(kept),
        "criteria": counts,
        "require_think": require_think,
        "examples": {name: found for name, found in examples.items() if found},
    }
    return kept, report


def _check_names(criteria: Iterable[str] | None) -> list[str]:
    names = list(CRITERIA) if criteria is None else list(criteria)
    unknown = [name for name in names if name not in CRITERIA]
    if unknown:
        raise ValueError(f"unknown filter criteria {', '.join(unknown)}; known: {', '.join(CRITERIA)}")
    return names
