"""Reading and writing dialogue files (JSONL, or a JSON list/object) and the bundled datasets.

``load_dialogues("tooltalk")`` loads a bundled dataset by name; any other argument is a path. Structural
problems (bad JSON, missing keys, wrong types) of every record are collected and raised together as one
:class:`DatasetError` whose lines read ``PATH:LINE: ID: FIELD.PATH: message``. Semantic checks (checklist
rules, unknown tools, ...) live in :mod:`cm2_env.data.validate`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from pydantic import ValidationError

from cm2_env.data.models import Dialogue

#: Datasets shipped inside the package (cm2_env/data/bundled/<name>/dialogues.jsonl).
BUNDLED: tuple[str, ...] = ("tooltalk",)


@dataclass(frozen=True)
class Problem:
    """One problem of one record: where (file, 1-based line, dialogue id, field path) and what."""

    path: str
    line: int
    record_id: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.record_id or '?'}: {self.field or '<record>'}: {self.message}"


class DatasetError(ValueError):
    """A dataset file has problems; ``problems`` lists all of them."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        shown = "\n".join(str(p) for p in self.problems[:20])
        more = f"\n... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(
            f"{len(self.problems)} problem(s) in dataset:\n{shown}{more}\n"
            "Fix the records listed (run `cm2 data validate PATH` for the full report)."
        )


@dataclass(frozen=True)
class RawRecord:
    """A record as read from a file: its 1-based line, and the decoded JSON or the decoding error."""

    line: int
    data: Any
    error: str | None = None


def bundled_path(name: str) -> Path:
    """Path of a bundled dataset's dialogues file."""
    if name not in BUNDLED:
        raise KeyError(f"unknown bundled dataset {name!r}; bundled: {', '.join(BUNDLED)}")
    return Path(str(resources.files("cm2_env.data") / "bundled" / name / "dialogues.jsonl"))


def resolve(path_or_name: str | Path) -> Path:
    """A bundled dataset name or a path -> the file to read."""
    if isinstance(path_or_name, str) and path_or_name in BUNDLED and not Path(path_or_name).exists():
        return bundled_path(path_or_name)
    path = Path(path_or_name)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file, and not a bundled dataset name (bundled: {', '.join(BUNDLED)})"
        )
    return path


def read_text_file(path: Path, what: str = "JSON or JSONL file") -> str:
    """The UTF-8 text of ``path``; a folder or a binary file raises ValueError naming the file and the fix."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a file. Fix: give a {what}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); is it a "
                         f"binary file? Fix: give a {what}") from None


def read_records(path: Path) -> Iterator[RawRecord]:
    """Decode a JSONL file line by line, or a JSON document (a ``.json`` file, a list, or one object spread over
    several lines) holding one record or a list of records -- the one reader of record files.

    Blank lines are skipped. A line that is not valid JSON yields a record with ``error`` set, so a caller can
    report it and keep going. A folder or a binary file raises ValueError (:func:`read_text_file`).
    """
    text = read_text_file(path)
    stripped = text.lstrip()
    first_line = stripped.split("\n", 1)[0]
    multi_line_object = stripped.startswith("{") and "\n" in stripped.strip() and not _parses(first_line)
    if path.suffix == ".json" or stripped.startswith("[") or multi_line_object:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if path.suffix == ".json" or multi_line_object:
                yield RawRecord(exc.lineno, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
                return
        else:
            items = data if isinstance(data, list) else [data]
            for i, item in enumerate(items):
                yield RawRecord(i + 1 if isinstance(data, list) else 1, item)
            return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield RawRecord(number, json.loads(line))
        except json.JSONDecodeError as exc:
            yield RawRecord(number, None, f"invalid JSON: {exc.msg} (column {exc.colno})")


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def record_id(data: Any) -> str:
    if isinstance(data, dict):
        value = data.get("id", data.get("uuid", ""))
        return str(value) if value is not None else ""
    return ""


def pydantic_problems(path: str, line: int, rid: str, error: ValidationError) -> list[Problem]:
    """One :class:`Problem` per pydantic error, with the field path written ``messages.3.tool_calls.0.id``."""
    problems = []
    for err in error.errors():
        loc = ".".join(str(part) for part in err["loc"])
        message = err["msg"]
        if err["type"] == "missing":
            message = "required field is missing; add it"
        elif err["type"] == "literal_error":
            message = f"{err['msg']} (got {err.get('input')!r})"
        problems.append(Problem(path, line, rid, loc, message))
    return problems


def parse_record(path: str, raw: RawRecord) -> tuple[Dialogue | None, list[Problem]]:
    """Turn a raw record into a :class:`Dialogue`, or the structural problems that prevent it."""
    if raw.error is not None:
        return None, [Problem(path, raw.line, "", "", raw.error)]
    rid = record_id(raw.data)
    if not isinstance(raw.data, dict):
        return None, [Problem(path, raw.line, rid, "", f"a record must be a JSON object, got {type(raw.data).__name__}")]
    try:
        return Dialogue.model_validate(raw.data), []
    except ValidationError as exc:
        return None, pydantic_problems(path, raw.line, rid, exc)


def load_dialogues(path_or_name: str | Path | Sequence[Dialogue | dict]) -> list[Dialogue]:
    """Load dialogues from a bundled dataset name, a JSONL/JSON file, or a list of records.

    Raises :class:`DatasetError` listing every structural problem of the input (nothing is silently dropped).
    """
    if isinstance(path_or_name, (list, tuple)):
        return _from_objects(path_or_name)
    path = resolve(path_or_name)
    dialogues, problems = [], []
    for raw in read_records(path):
        dialogue, found = parse_record(str(path), raw)
        problems.extend(found)
        if dialogue is not None:
            dialogues.append(dialogue)
    if problems:
        raise DatasetError(problems)
    return dialogues


def _from_objects(items: Sequence[Dialogue | dict]) -> list[Dialogue]:
    dialogues, problems = [], []
    for i, item in enumerate(items):
        if isinstance(item, Dialogue):
            dialogues.append(item)
            continue
        dialogue, found = parse_record("<list>", RawRecord(i + 1, item))
        problems.extend(found)
        if dialogue is not None:
            dialogues.append(dialogue)
    if problems:
        raise DatasetError(problems)
    return dialogues


def write_dialogues(path: str | Path, dialogues: Iterable[Dialogue | dict]) -> int:
    """Write dialogues as JSONL in the canonical format; returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for dialogue in dialogues:
            record = dialogue.to_record() if isinstance(dialogue, Dialogue) else dialogue
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count
