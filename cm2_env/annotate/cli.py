"""``cm2 data annotate | llm-filter | compress-cot``: the LLM steps of the data pipeline (docs/data_pipeline.md).

Each command reads IN (JSONL/JSON or a bundled name), writes OUT (JSONL) as records complete, puts rejected
records with their reasons into ``OUT.rejected.jsonl``, and writes a JSON report (default ``OUT.report.json``).
Runs are resumable: records already in OUT or in the rejection file are skipped (see
:mod:`cm2_env.annotate.runner`). The exit code is 1 when some records failed (LLM errors or no parsable answer):
running the same command again retries exactly those. Registered lazily by :mod:`cm2_env.data.cli`, so
``cm2 data validate`` never imports the LLM layer.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console
from rich.table import Table

from cm2_env.progress import Phases


def _common_options(function: Callable) -> Callable:
    options = [
        click.argument("source", metavar="IN"),
        click.argument("out", metavar="OUT", type=click.Path(dir_okay=False)),
        click.option("--llm", "llm_spec", required=True, metavar="SPEC",
                     help="LLM spec, e.g. openai:http://127.0.0.1:8000/v1#Qwen3-30B-A3B (docs/llm.md)."),
        click.option("--concurrency", type=click.IntRange(1), default=16, show_default=True,
                     help="Records processed at once."),
        click.option("--temperature", type=float, default=None, help="Sampling temperature (default: the server's)."),
        click.option("--max-tokens", type=click.IntRange(1), default=None, help="Completion token limit per request."),
        click.option("--limit", type=click.IntRange(0), default=None, help="Process at most N records of IN."),
        click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
                     help="Where to write the JSON report (default: OUT.report.json)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _sampling(temperature: float | None, max_tokens: int | None) -> dict[str, Any]:
    sampling: dict[str, Any] = {}
    if temperature is not None:
        sampling["temperature"] = temperature
    if max_tokens is not None:
        sampling["max_tokens"] = max_tokens
    return sampling


@click.command("annotate")
@_common_options
@click.option("--repair-rounds", type=click.IntRange(0), default=1, show_default=True,
              help="Follow-up requests that send validation problems back to the annotator.")
@click.option("--append-variant", is_flag=True,
              help="Keep existing checklists and add the new one as another variant (default: replace them).")
def annotate(source: str, out: str, llm_spec: str, concurrency: int, temperature: float | None,
             max_tokens: int | None, limit: int | None, report_path: str | None, repair_rounds: int,
             append_variant: bool) -> None:
    """Write the checklist of every turn of IN with an annotator LLM; only checklists that pass validation are
    written to OUT, the others go to OUT.rejected.jsonl with their problems."""
    from cm2_env.annotate.checklists import annotate_dialogue
    from cm2_env.annotate.runner import Outcome
    from cm2_env.data.validate import validate_record

    def check_input(raw: dict, dialogue: Any) -> list[str]:
        problems = validate_record(raw)  # the dialogue itself must be valid; its old checklists may be replaced
        return [f"{p.field}: {p.message}" for p in problems
                if append_variant or not (p.field == "checklists" or p.field.startswith("checklists."))]

    async def process(client: Any, raw: dict, dialogue: Any) -> Outcome:
        result = await annotate_dialogue(client, dialogue, sampling=_sampling(temperature, max_tokens),
                                         repair_rounds=repair_rounds, append_variant=append_variant)
        counts = {"requests": result.rounds, "repaired": int(result.repaired), "items": result.items}
        detail = {"first_problems": result.first_problems[:20]} if result.first_problems else {}
        if result.ok:
            return Outcome("written", result.record, counts=counts)
        return Outcome("rejected", reasons=result.problems, detail=detail, counts=counts)

    _run("annotate", "annotator", source, out, llm_spec, concurrency, limit, report_path, process, check_input)


@click.command("llm-filter")
@_common_options
@click.option("--passes", default="low,medium,high", show_default=True, metavar="E1,E2,...",
              help="Reasoning efforts of the successive review passes; any NoError=false drops the record.")
@click.option("--effort-field", default="reasoning_effort", show_default=True,
              help="Request field that carries each pass's effort.")
@click.option("--attempts", type=click.IntRange(1), default=2, show_default=True,
              help="Requests per pass when the answer holds no parsable NoError verdict.")
def llm_filter(source: str, out: str, llm_spec: str, concurrency: int, temperature: float | None,
               max_tokens: int | None, limit: int | None, report_path: str | None, passes: str,
               effort_field: str, attempts: int) -> None:
    """Strict "NoError" review of every record of IN in passes of rising effort; records every pass keeps are
    written unchanged to OUT, dropped ones go to OUT.rejected.jsonl with the reviewer's reasons."""
    from cm2_env.annotate.llm_filter import review_dialogue
    from cm2_env.annotate.runner import Outcome

    efforts = [effort.strip() for effort in passes.split(",") if effort.strip()]
    if not efforts:
        raise click.BadParameter("give at least one effort, e.g. low,medium,high", param_hint="--passes")

    async def process(client: Any, raw: dict, dialogue: Any) -> Outcome:
        result = await review_dialogue(client, dialogue, efforts, sampling=_sampling(temperature, max_tokens),
                                       attempts=attempts, effort_field=effort_field)
        counts = {f"pass:{p.effort}:{_verdict_name(p.no_error)}": 1 for p in result.passes}
        counts["requests"] = sum(p.attempts for p in result.passes)
        detail = {"passes": [p.to_dict() for p in result.passes]}
        if result.decision == "keep":
            return Outcome("written", raw, counts=counts)
        status = "rejected" if result.decision == "drop" else "failed"
        return Outcome(status, reasons=result.reasons, detail=detail, counts=counts)

    _run("llm-filter", "llm_filter", source, out, llm_spec, concurrency, limit, report_path, process, None)


def _verdict_name(no_error: bool | None) -> str:
    return {True: "no_error", False: "error", None: "unparsable"}[no_error]


@click.command("compress-cot")
@_common_options
@click.option("--min-chars", type=click.IntRange(0), default=120, show_default=True,
              help="Leave thinking shorter than this unchanged.")
@click.option("--attempts", type=click.IntRange(1), default=1, show_default=True,
              help="Requests per think block before a rejected rewrite keeps the original.")
def compress_cot(source: str, out: str, llm_spec: str, concurrency: int, temperature: float | None,
                 max_tokens: int | None, limit: int | None, report_path: str | None, min_chars: int,
                 attempts: int) -> None:
    """Rewrite every <think> block of IN shorter with an LLM; tool calls, replies and all other fields stay
    byte-identical, and a rewrite that changes anything else is rejected (the original block is kept)."""
    from cm2_env.annotate.compress import compress_dialogue
    from cm2_env.annotate.runner import Outcome

    async def process(client: Any, raw: dict, dialogue: Any) -> Outcome:
        result = await compress_dialogue(client, dialogue, raw, sampling=_sampling(temperature, max_tokens),
                                         min_chars=min_chars, attempts=attempts)
        return Outcome("written", result.record, counts=result.counts())

    _run("compress-cot", "cot_compressor", source, out, llm_spec, concurrency, limit, report_path, process, None)


def _run(command: str, role: str, source: str, out: str, llm_spec: str, concurrency: int, limit: int | None,
         report_path: str | None, process: Callable, check_input: Callable | None) -> None:
    """Build the client, process the file with a progress bar, write the report, print the summary."""
    from cm2_env.annotate.runner import process_file
    from cm2_env.llm import LLMConfigError, make_client

    try:
        client = make_client(llm_spec, role=role)
    except LLMConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    console = Console(stderr=True)

    async def main() -> dict[str, Any]:
        with Phases(console=console) as bars:
            tally = {"written": 0, "rejected": 0, "failed": 0}
            state = {"done": 0, "total": 0}

            def on_total(n: int) -> None:
                state["total"] = n

            def advance(status: str, _done: int) -> None:
                tally[status] += 1
                state["done"] += 1
                bars(command, state["done"], state["total"], dict(tally))

            async with client:
                return await process_file(source, out, lambda raw, dialogue: process(client, raw, dialogue),
                                          concurrency=concurrency, check_input=check_input, limit=limit,
                                          on_total=on_total, on_progress=advance)

    try:
        report = asyncio.run(main())
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    report = {"command": command, "llm": str(client.spec), **report, "usage": client.usage()}
    report_file = Path(report_path or f"{out}.report.json")
    report_file.parent.mkdir(parents=True, exist_ok=True)
    report_file.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    console.print(_summary_table(report))
    click.echo(f"{command}: wrote {report['written']} record(s) to {out}; {report['rejected']} rejected "
               f"({report['rejected_file']}), {report['failed']} failed, {report['invalid_input']} invalid input, "
               f"{report['already_done']} already done (report: {report_file})")
    if report["failed"]:
        raise click.ClickException(f"{report['failed']} record(s) failed (LLM errors or no parsable answer; "
                                   f"see failed_examples in {report_file}); run the same command again to retry them")


def _summary_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"cm2 data {report['command']} ({report['elapsed_s']:.1f} s)")
    table.add_column("records")
    table.add_column("count", justify="right")
    for key in ("input_records", "already_done", "invalid_input", "written", "rejected", "failed"):
        table.add_row(key.replace("_", " "), str(report[key]))
    if report["counts"]:
        table.add_section()
        for key, value in report["counts"].items():
            table.add_row(key, f"{value:g}")
    return table
