"""``cm2 data``: validate, filter and describe dialogue datasets.

- ``cm2 data validate PATH|NAME``: one line per problem, ``PATH:LINE: ID: FIELD.PATH: message``, then a summary
  line; exit code 1 if there is any problem.
- ``cm2 data filter IN OUT [--criteria a,b] [--require-think] [--report FILE]``: the rule-based filters; writes
  the kept records (unchanged) as JSONL and a JSON report (default ``OUT.report.json``).
- ``cm2 data stats PATH|NAME [--json]``: dataset statistics as a table (or JSON).
- ``cm2 data annotate | llm-filter | compress-cot IN OUT --llm SPEC``: the LLM steps (:mod:`cm2_env.annotate.cli`),
  imported only when invoked.

Imports stay light (click, rich, pydantic, jsonschema): no torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from cm2_env.data.filters import CRITERIA, apply_filters
from cm2_env.data.io import DatasetError, load_dialogues, read_records, resolve, write_dialogues
from cm2_env.data.stats import dataset_stats
from cm2_env.data.validate import validate_file


class _DataGroup(click.Group):
    """The ``data`` group; the LLM-backed sub-commands are imported only when used (the rule-based ones and
    ``cm2 data validate`` never import the LLM layer)."""

    LAZY = {"annotate": "cm2_env.annotate.cli:annotate", "llm-filter": "cm2_env.annotate.cli:llm_filter",
            "compress-cot": "cm2_env.annotate.cli:compress_cot"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY:
            import importlib

            module_name, attr = self.LAZY[cmd_name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_DataGroup, help="Validate, filter and describe dialogue datasets.")
def data() -> None:
    pass


@data.command("validate")
@click.argument("path_or_name")
def validate(path_or_name: str) -> None:
    """Report every problem of a dataset (PATH_OR_NAME: a JSONL/JSON file or a bundled name, e.g. tooltalk)."""
    try:
        dialogues, problems = validate_file(path_or_name)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    for problem in problems:
        click.echo(str(problem))
    summary = f"{path_or_name}: {len(dialogues)} dialogues, {len(problems)} problems"
    if problems:
        summary += f" in {len({p.line for p in problems})} records"
    click.echo(summary)
    if problems:
        raise SystemExit(1)


@data.command("filter")
@click.argument("source", metavar="IN")
@click.argument("out", metavar="OUT", type=click.Path(dir_okay=False))
@click.option("--criteria", default=None, metavar="A,B,...",
              help=f"Comma-separated criteria to apply (default: all of {', '.join(CRITERIA)}).")
@click.option("--require-think", is_flag=True,
              help="Apply the think-tag rule to every record, not only to records that use reasoning.")
@click.option("--report", "report_path", default=None, type=click.Path(dir_okay=False),
              help="Where to write the JSON report (default: OUT.report.json).")
def filter_command(source: str, out: str, criteria: str | None, require_think: bool, report_path: str | None) -> None:
    """Apply the rule-based filters to IN; write the kept records to OUT (JSONL) and a JSON report."""
    names = [name.strip() for name in criteria.split(",") if name.strip()] if criteria else None
    unknown = [name for name in names or [] if name not in CRITERIA]
    if unknown:
        raise click.BadParameter(f"unknown {', '.join(unknown)}; known: {', '.join(CRITERIA)}",
                                 param_hint="--criteria")
    try:
        path = resolve(source)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    records, lines, unreadable = [], [], []
    for raw in read_records(path):
        if raw.error is not None:
            unreadable.append(raw.line)
            continue
        records.append(raw.data)
        lines.append(raw.line)
    kept, report = apply_filters(records, names, require_think=require_think)
    for examples in report["examples"].values():
        for example in examples:
            example["line"] = lines[example.pop("index")]
    report = {"input": str(path), "output": out, **report, "unreadable_lines": unreadable}
    write_dialogues(out, kept)
    report_file = Path(report_path or f"{out}.report.json")
    report_file.parent.mkdir(parents=True, exist_ok=True)
    report_file.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    Console().print(_filter_table(report))
    if unreadable:
        click.echo(f"{len(unreadable)} line(s) are not valid JSON and were dropped: {unreadable[:10]}")
    click.echo(f"kept {report['kept']} of {report['total']} records -> {out} (report: {report_file})")


def _filter_table(report: dict) -> Table:
    table = Table(title="Rule-based filters", caption="a record can fail several criteria")
    table.add_column("criterion")
    table.add_column("rejected", justify="right")
    table.add_column("share", justify="right")
    total = report["total"]
    for name, count in report["criteria"].items():
        table.add_row(name, str(count), f"{count / total:.1%}" if total else "-")
    table.add_section()
    table.add_row("kept", str(report["kept"]), f"{report['kept'] / total:.1%}" if total else "-")
    return table


@data.command("stats")
@click.argument("path_or_name")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON instead of a table.")
def stats(path_or_name: str, as_json: bool) -> None:
    """Print dialogue, turn, action, tool-call and checklist statistics of PATH_OR_NAME."""
    try:
        dialogues = load_dialogues(path_or_name)
    except (FileNotFoundError, DatasetError) as exc:
        raise click.ClickException(str(exc)) from exc
    numbers = dataset_stats(dialogues)
    if as_json:
        click.echo(json.dumps(numbers, indent=2))
        return
    Console().print(_stats_table(numbers, title=f"{path_or_name}"))


def _stats_table(numbers: dict, title: str) -> Table:
    table = Table(title=title)
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in numbers.items():
        if key == "focus":
            continue
        if isinstance(value, float):
            shown = f"{value:.1%}" if key.endswith("_share") else f"{value:.2f}"
        else:
            shown = str(value)
        table.add_row(key.replace("_", " "), shown)
    table.add_section()
    items = numbers["items"]
    for focus, count in numbers["focus"].items():
        share = f" ({count / items:.1%})" if items else ""
        table.add_row(f"focus {focus}", f"{count}{share}")
    return table
