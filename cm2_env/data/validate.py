"""Validation of dialogue files: every problem of every record, each with file, line, field path and fix.

Contract:

- :func:`validate_file` reads a JSONL/JSON file (or a bundled dataset by name) and returns the dialogues that
  parse plus *all* problems found; it never stops at the first one and never reports a valid record.
- Structural problems (bad JSON, missing keys, wrong types, invalid focus values, non-boolean strictness) come
  from the pydantic models via :func:`cm2_env.data.io.parse_record`.
- Semantic problems (this module, and :mod:`cm2_env.data.checklist_rules` for checklists) are checked on the
  canonical form of a record that parses, and tolerantly on the raw record of one that does not, so it is still
  checked as far as its shape allows: a bad weight type and a wrong snippet in the same record are both
  reported. Parts that are structurally broken are skipped here (already reported).
- Semantic rules: tool schemas are JSON Schema objects (meta-schema check) with unique names; tool calls name a
  known tool and carry a JSON object as arguments; every turn ends with a reply; and the checklist rules of
  docs/data_format.md (one entry per turn, weights sum to 1 per turn, unique item ids, dependency targets exist,
  focus on ``tool.content`` and form no cycle, evidence pointers in range, snippets verbatim substrings of the
  canonical rendering). Dialogue ids are unique within a file.

Field paths are dotted and 0-based, e.g. ``checklists.0.2.1.weight`` (variant 0, turn 2, item 1) or
``messages.5.tool_calls.0.function.name``. Checklists given as a single variant are addressed after
normalisation (``checklists.0...``), as the pydantic errors are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError

from cm2_env.data.checklist_rules import Finding, checklist_problems, dependency_cycles
from cm2_env.data.io import Problem, parse_record, read_records, record_id, resolve
from cm2_env.data.models import Dialogue, normalise_record
from cm2_env.data.turns import Turn, split_turns

__all__ = ["validate_file", "validate_record", "dependency_cycles"]


def validate_file(path_or_name: str | Path) -> tuple[list[Dialogue], list[Problem]]:
    """Validate a dialogue file or a bundled dataset name.

    Returns ``(dialogues, problems)``: the records that parse into a :class:`Dialogue` (even if they have
    semantic problems) and every problem of the file, in file order. Raises ``FileNotFoundError`` for a path
    that does not exist and is not a bundled name.
    """
    path = resolve(path_or_name)
    shown = str(path)
    dialogues: list[Dialogue] = []
    problems: list[Problem] = []
    first_line_of_id: dict[str, int] = {}
    records = 0
    for raw in read_records(path):
        records += 1
        dialogue, structural = parse_record(shown, raw)
        problems.extend(_with_fix(p) for p in structural)
        if dialogue is not None:
            dialogues.append(dialogue)
        if raw.error is not None or not isinstance(raw.data, dict):
            continue
        # A parsed record is checked in its canonical form: the form the environment and judge will see.
        record = dialogue.to_record() if dialogue is not None else raw.data
        problems.extend(validate_record(record, shown, raw.line))
        rid = record_id(raw.data)
        if rid and rid in first_line_of_id:
            problems.append(Problem(shown, raw.line, rid, "id",
                                    f"duplicate dialogue id (first used on line {first_line_of_id[rid]}); "
                                    "give every dialogue of a file a unique id"))
        elif rid:
            first_line_of_id[rid] = raw.line
    if records == 0:
        problems.append(Problem(shown, 0, "", "", "the file holds no records; give one dialogue JSON object per line"))
    return dialogues, problems


def unencodable_text(value: Any, field: str = "") -> Iterator[tuple[str, str]]:
    """``(field path, text)`` of every string in a decoded JSON value that UTF-8 cannot encode (a lone surrogate
    such as ``"\\ud800"`` is valid JSON but breaks every writer, tokenizer and server downstream)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            yield field, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from unencodable_text(item, f"{field}.{key}" if field else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from unencodable_text(item, f"{field}.{index}" if field else str(index))


def _around_surrogate(text: str) -> str:
    index = next(i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff")
    return "..." + text[max(0, index - 20):index + 1].encode("utf-8", "backslashreplace").decode("ascii", "replace")


def validate_record(record: Mapping[str, Any], path: str = "<record>", line: int = 0) -> list[Problem]:
    """The semantic problems of one raw record (a decoded JSON object), whatever its structural state."""
    # The model's input normalisation (uuid -> id, a single checklist variant -> a list of variants) keeps
    # field paths identical to those of the structural (pydantic) problems.
    data = normalise_record(record)
    rid = record_id(data)
    findings: list[Finding] = [
        (field, f"text holds a lone surrogate ({_around_surrogate(text)}) that UTF-8 cannot encode. Fix: remove "
                "it or replace it with the character it was meant to be")
        for field, text in unencodable_text(data)]
    findings.extend(tool_problems(data.get("tools")))
    messages = data.get("messages")
    if isinstance(messages, list):
        findings.extend(message_problems(messages, _tool_names(data.get("tools"))))
        # Placeholders keep positions aligned when some message is not an object (reported structurally).
        turns = split_turns([m if isinstance(m, dict) else {} for m in messages])
        findings.extend(turn_problems(turns))
        findings.extend(checklist_problems(data.get("checklists"), turns))
    return [Problem(path, line, rid, field, message) for field, message in findings]


# --- tools and messages ---------------------------------------------------------------------------------


def tool_problems(tools: Any) -> Iterator[Finding]:
    """Duplicate tool names and ``parameters`` that are not a valid JSON Schema of type object."""
    if not isinstance(tools, list):
        return
    first_index: dict[str, int] = {}
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            continue
        name = function.get("name")
        if isinstance(name, str) and name:
            if name in first_index:
                yield (f"tools.{i}.function.name",
                       f"duplicate tool name {name!r} (also tools.{first_index[name]}); give every tool a unique name")
            else:
                first_index[name] = i
        if isinstance(function.get("parameters"), dict):
            yield from schema_problems(function["parameters"], f"tools.{i}.function.parameters")


def schema_problems(schema: dict, field: str) -> Iterator[Finding]:
    """Problems of a tool's ``parameters``: it must be ``{"type": "object", ...}`` and a valid JSON Schema."""
    if schema.get("type") != "object":
        yield (f"{field}.type", f"parameters must be a JSON Schema of type 'object' (got type {schema.get('type')!r}); "
                                "set \"type\": \"object\" and describe the arguments under \"properties\"")
    try:
        validator_class = validators.validator_for(schema, default=Draft202012Validator)
    except Exception:  # an unhashable or unknown "$schema": check against the default draft
        validator_class = Draft202012Validator
    try:
        errors = list(validator_class(validator_class.META_SCHEMA).iter_errors(schema))
    except (SchemaError, RecursionError, TypeError, ValueError) as exc:
        yield field, f"cannot be checked as a JSON Schema ({exc}); write a plain JSON Schema object"
        return
    for error in errors:
        sub = ".".join(str(part) for part in error.absolute_path)
        yield (f"{field}.{sub}" if sub else field,
               f"not a valid JSON Schema: {error.message}; fix it so it validates against the JSON Schema meta-schema")


def _tool_names(tools: Any) -> set[str] | None:
    """Names of the declared tools, or ``None`` when ``tools`` is too broken to tell."""
    if tools is None:
        return set()
    if not isinstance(tools, list):
        return None
    names = set()
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def message_problems(messages: list, tool_names: set[str] | None) -> Iterator[Finding]:
    """System message placement, at least one user message, known tools and JSON-object arguments."""
    if not any(isinstance(m, dict) and m.get("role") == "user" for m in messages):
        yield "messages", "the dialogue has no user message; a dialogue needs at least one turn (a user message)"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        if message.get("role") == "system" and i != 0:
            yield (f"messages.{i}.role",
                   "a system message may only be the first message; merge it into the first one or remove it")
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        if not isinstance(calls, list):
            continue
        for k, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                yield from _call_problems(function, f"messages.{i}.tool_calls.{k}.function", tool_names)


def _call_problems(function: dict, field: str, tool_names: set[str] | None) -> Iterator[Finding]:
    name = function.get("name")
    if isinstance(name, str) and tool_names is not None and name not in tool_names:
        known = ", ".join(sorted(tool_names)) or "none"
        yield (f"{field}.name",
               f"calls unknown tool {name!r} (declared tools: {known}); fix the name or declare the tool in `tools`")
    arguments = function.get("arguments")
    if isinstance(arguments, str) and arguments.strip():
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            yield (f"{field}.arguments",
                   f"arguments are not valid JSON ({exc.msg} at column {exc.colno}); "
                   "write a JSON object string such as '{\"key\": \"value\"}'")
            return
    elif not isinstance(arguments, list):
        return  # blank, null and objects are fine; other types are structural problems, reported by the model
    if not isinstance(arguments, dict):
        yield (f"{field}.arguments",
               f"arguments must be a JSON object, got {type(arguments).__name__}; "
               "pass the arguments by name as '{\"key\": \"value\"}'")


def turn_problems(turns: list[Turn]) -> Iterator[Finding]:
    """Every reference turn must end with an assistant message without tool calls (the user-visible reply)."""
    for turn in turns:
        if turn.ends_with_reply:
            continue
        last = turn.messages[-1]
        position = turn.start + len(turn.messages) - 1
        kind = last.get("role") or "malformed"
        if kind == "assistant":
            kind = "assistant message with tool calls"
        else:
            kind = f"{kind} message"
        yield (f"messages.{position}",
               f"turn {turn.index} ends with a {kind}; end every turn with an assistant message without "
               "tool_calls (the user-visible reply)")


# --- messages of structural problems ----------------------------------------------------------------------

_FIXES: tuple[tuple[str, str], ...] = (
    ("invalid JSON", "write each record as one complete JSON object on a single line"),
    ("valid boolean", "write true or false (a JSON boolean; strings such as \"true\" and numbers are not accepted)"),
    ("valid string", "write a JSON string"),
    ("valid list", "write a JSON array"),
    ("valid array", "write a JSON array"),
    ("valid dictionary", "write a JSON object"),
    ("valid number", "write a JSON number"),
    ("valid integer", "write a JSON integer"),
    ("greater than or equal to", "use a value in the allowed range"),
    ("less than or equal to", "use a value in the allowed range"),
    ("at least 1 character", "write a non-empty string"),
    ("Input should be", "use one of the allowed values"),
)


def _with_fix(problem: Problem) -> Problem:
    """A structural problem whose message also says how to fix it."""
    for marker, fix in _FIXES:
        if marker in problem.message:
            return Problem(problem.path, problem.line, problem.record_id, problem.field, f"{problem.message}; {fix}")
    return problem
