"""Run an LLM step over every record of a dialogue file: concurrent, resumable, with progress and a report.

Contract of :func:`process_file`:

- ``IN`` is read with :func:`cm2_env.data.io.read_records`. A record that does not parse into a
  :class:`~cm2_env.data.models.Dialogue`, fails ``check_input``, or repeats an id is *invalid input*: reported
  (line, id, problems), never sent to the LLM, never written.
- Resumable: ids already in ``OUT`` or in the rejection file ``OUT.rejected.jsonl`` are skipped, so running the
  same command again continues an interrupted run. A partly written last line (a crash) is dropped first.
  Delete the rejection file to give rejected records another chance.
- ``concurrency`` records are processed at once (each by ``process``, whose LLM requests also respect the
  client's own per-endpoint limits). Results are appended as they complete, so ``OUT`` is in completion order.
- ``process`` returns an :class:`Outcome`: ``written`` (the record goes to ``OUT``), ``rejected`` (a decision
  about the data: its reasons go to the rejection file) or ``failed`` (no decision, e.g. no parsable answer:
  reported only, retried by the next run). An :class:`cm2_env.llm.LLMError` raised by ``process`` counts as
  ``failed``; any other exception is a bug and stops the run (what was written stays written).
- The report (a dict; the CLI writes it as JSON) counts every category, sums the outcomes' ``counts``, keeps the
  first :data:`MAX_EXAMPLES` rejections and failures with their reasons, and holds the client's usage.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal

from cm2_env.data.io import parse_record, read_records, record_id, resolve
from cm2_env.data.models import Dialogue
from cm2_env.llm import LLMError
from cm2_env.records import resume_jsonl

MAX_EXAMPLES = 20
Status = Literal["written", "rejected", "failed"]


@dataclass
class Outcome:
    """The result of one record: its status, the record to write, reasons, and numbers to sum in the report."""

    status: Status
    record: dict[str, Any] | None = None
    reasons: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)


Process = Callable[[dict[str, Any], Dialogue], Awaitable[Outcome]]
CheckInput = Callable[[dict[str, Any], Dialogue], list[str]]


def rejected_path(out: str | Path) -> Path:
    return Path(f"{out}.rejected.jsonl")


def finished_ids(path: Path) -> set[str]:
    """Ids of the complete JSON-object lines of ``path``; a partial line (a crash) is cut off
    (:func:`cm2_env.records.resume_jsonl`)."""
    return set(resume_jsonl(path, lambda data: (record_id(data) or None) if isinstance(data, dict) else None))


async def process_file(source: str | Path, out: str | Path, process: Process, *, concurrency: int = 16,
                       check_input: CheckInput | None = None, limit: int | None = None,
                       on_progress: Callable[[str, int], None] | None = None,
                       on_total: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Process ``source`` into ``out`` (module docstring). ``on_total(n)`` is called once with the number of
    records to process; ``on_progress(status, n_done)`` after each record. Returns the report."""
    started = time.perf_counter()
    path, out_path = resolve(source), Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    reject_path = rejected_path(out_path)
    done = finished_ids(out_path) | finished_ids(reject_path)
    report: dict[str, Any] = {"input": str(path), "output": str(out_path), "rejected_file": str(reject_path),
                              "input_records": 0, "already_done": 0, "invalid_input": 0, "written": 0,
                              "rejected": 0, "failed": 0, "counts": Counter(), "invalid_examples": [],
                              "rejected_examples": [], "failed_examples": []}
    pending = _pending(path, done, check_input, report)
    if limit is not None:
        pending = pending[:max(limit, 0)]
    if on_total:
        on_total(len(pending))
    queue: asyncio.Queue = asyncio.Queue()
    for job in pending:
        queue.put_nowait(job)
    with out_path.open("a", encoding="utf-8") as out_file, reject_path.open("a", encoding="utf-8") as reject_file:
        async def worker() -> None:
            while not queue.empty():
                line, raw, dialogue = queue.get_nowait()
                try:
                    outcome = await process(raw, dialogue)
                except LLMError as exc:
                    outcome = Outcome("failed", reasons=[str(exc)])
                _record_outcome(outcome, line, dialogue.id, report, out_file, reject_file)
                if on_progress:
                    on_progress(outcome.status, report["written"] + report["rejected"] + report["failed"])

        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(pending) or 1)))))
    report["counts"] = dict(sorted(report["counts"].items()))
    report["elapsed_s"] = round(time.perf_counter() - started, 3)
    return report


def _pending(path: Path, done: set[str], check_input: CheckInput | None,
             report: dict[str, Any]) -> list[tuple[int, dict, Dialogue]]:
    pending, seen = [], set()
    for raw in read_records(path):
        report["input_records"] += 1
        dialogue, problems = parse_record(str(path), raw)
        reasons = [f"{p.field or '<record>'}: {p.message}" for p in problems]
        rid = dialogue.id if dialogue is not None else record_id(raw.data)
        if dialogue is not None and rid in done:
            report["already_done"] += 1
            continue
        if dialogue is not None and rid in seen:
            reasons = [f"duplicate id {rid!r}: only its first record is processed; give every record a unique id"]
        elif dialogue is not None and check_input is not None:
            reasons = check_input(raw.data, dialogue)
        if reasons:
            report["invalid_input"] += 1
            if len(report["invalid_examples"]) < MAX_EXAMPLES:
                report["invalid_examples"].append({"line": raw.line, "id": rid, "reasons": reasons[:10]})
            continue
        seen.add(rid)
        pending.append((raw.line, raw.data, dialogue))
    return pending


def _record_outcome(outcome: Outcome, line: int, rid: str, report: dict[str, Any], out_file: Any,
                    reject_file: Any) -> None:
    report[outcome.status] += 1
    report["counts"].update(outcome.counts)
    entry = {"id": rid, "line": line, "reasons": outcome.reasons, **outcome.detail}
    if outcome.status == "written":
        out_file.write(json.dumps(outcome.record, ensure_ascii=False) + "\n")
        out_file.flush()
        return
    if outcome.status == "rejected":
        reject_file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        reject_file.flush()
    examples = report[f"{outcome.status}_examples"]
    if len(examples) < MAX_EXAMPLES:
        examples.append(entry)
