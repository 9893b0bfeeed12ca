"""Argument checks for tool calls: canonical JSON keys for replay, and JSON-schema validation with readable errors.

Pure functions. ``canonical_arguments`` is the replay key (released code: canonical JSON with sorted keys, so key
order is free while types and list order matter); ``lenient`` additionally treats numeric strings as numbers and
ignores surrounding whitespace of strings. ``schema_problems`` lists what is wrong with a call's arguments for a
tool's ``parameters`` schema: missing required keys, unknown keys, wrong types, values outside an enum.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from cm2_env.text import shorten

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")


def _lenient_value(value: Any) -> Any:
    """Strings stripped; numeric strings become numbers; ints and equal floats compare equal."""
    if isinstance(value, str):
        stripped = value.strip()
        if _NUMBER.fullmatch(stripped):
            return _lenient_value(float(stripped))
        return stripped
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k).strip(): _lenient_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lenient_value(v) for v in value]
    return value


def canonical_arguments(arguments: Any, *, lenient: bool = False) -> str:
    """The replay key of decoded arguments: JSON with sorted keys (and lenient normalisation when asked).

    A raw string that was not valid JSON is keyed as itself (it can only match a recorded call that was equally
    broken, which never happens in validated data).
    """
    value = _lenient_value(arguments) if lenient else arguments
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value)


def schema_problems(arguments: Any, parameters: dict[str, Any]) -> list[str]:
    """What is wrong with ``arguments`` for the JSON Schema ``parameters`` (empty list when they are valid).

    Unknown keys are reported even when the schema does not say ``additionalProperties: false``: tool schemas
    of the datasets rarely say it, and the CM2 filters reject calls with keys the tool does not declare.
    """
    if not isinstance(arguments, dict):
        shown = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        return [f"arguments must be a JSON object, got {shorten(shown, 200)!r}"]
    problems: list[str] = []
    properties = parameters.get("properties") or {}
    if isinstance(properties, dict):
        unknown = sorted(set(arguments) - set(properties))
        if unknown and parameters.get("additionalProperties", False) is False:
            allowed = ", ".join(sorted(properties)) or "none"
            problems.append(f"unknown argument(s) {', '.join(map(repr, unknown))} (allowed: {allowed})")
    try:
        validator = Draft202012Validator(parameters)
        errors = sorted(validator.iter_errors(arguments), key=lambda e: (list(e.absolute_path), e.message))
    except SchemaError:  # a broken tool schema is the dataset's problem; do not blame the call
        return problems
    for error in errors:
        if error.validator == "additionalProperties" and problems:
            continue  # already reported as unknown arguments
        where = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "required":
            problems.append(f"missing required argument: {error.message.split(' is a required')[0]}")
        elif where:
            problems.append(f"argument {where!r}: {shorten(error.message, 200)}")
        else:
            problems.append(shorten(error.message, 200))
    return problems
