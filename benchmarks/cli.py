"""``cm2 bench``: run a policy on external benchmarks through their own loops and scorers.

``cm2 bench bfcl --policy oracle --limit 3 --out runs/bfcl-oracle`` runs BFCL v4 (``benchmarks.bfcl``), prints
the Table-3-style Markdown table and writes it plus a JSON report into ``--out``. With ``--json`` the last line
of stdout is one JSON object (``multi_turn_overall`` etc. in percent, 0-100). Progress goes to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from benchmarks.bfcl import MODES
from cm2_env.errors import SpecError
from cm2_env.text import shorten


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Run a policy on external benchmarks (BFCL v4, ...) through their official loops and scorers."""


@bench.command("bfcl")
@click.option("--policy", required=True,
              help="oracle | noop | an endpoint spec (openai:http://127.0.0.1:8000/v1#model) | hf:PATH | "
                   "module:attribute naming an agent (agents/base.py).")
@click.option("--categories", default="all", show_default=True,
              help="Comma-separated: all, multi_turn, web_search, or BFCL names such as multi_turn_base. "
                   "web_search runs only with SERPAPI_API_KEY (live Google search).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N entries of each category.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory (results, scores, report). Re-running with the same --out resumes.")
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True,
              help="Entries run in parallel.")
@click.option("--mode", type=click.Choice(MODES), default="fc", show_default=True,
              help="fc: structured tool calls (BFCL's -FC models); prompting: calls as Python text.")
@click.option("--name", default=None, help="BFCL model name (default cm2-<policy>[-FC]).")
@click.option("--json", "as_json", is_flag=True, help="End stdout with one JSON line of scores.")
def bfcl(policy: str, categories: str, limit: int | None, out: Path, concurrency: int, mode: str,
         name: str | None, as_json: bool) -> None:
    """Run POLICY on BFCL v4 (multi-turn: base, miss_func, miss_param, long_context; web search)."""
    from rich.console import Console

    from benchmarks.bfcl import (
        WEB_SEARCH_CATEGORIES, BfclError, BfclOptions, parse_categories, parse_policy, run_bfcl,
        web_search_unavailable,
    )

    stderr = Console(stderr=True)
    try:
        parse_policy(policy)
        options = BfclOptions(policy=policy, out=out, categories=parse_categories(categories), limit=limit,
                              concurrency=concurrency, mode=mode, name=name)
        skip_reason = web_search_unavailable() if set(options.categories) & set(WEB_SEARCH_CATEGORIES) else None
        if skip_reason:
            stderr.print(f"[yellow]{skip_reason}[/yellow]", soft_wrap=True)
        with _Progress(stderr) as progress:
            report = run_bfcl(options, on_event=progress.update)
    except (BfclError, SpecError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(report.markdown(), err=True)
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(report.markdown())
        click.echo(f"Report: {out / 'bfcl_results.md'} and {out / 'bfcl_results.json'} ({report.elapsed_s:.1f} s)")


class _Progress:
    """Turns the BFCL worker's events into one progress phase per category (:class:`cm2_env.progress.Phases`)."""

    def __init__(self, console: Any) -> None:
        from cm2_env.progress import Phases

        self._phases = Phases(console=console)
        self._counts: dict[str, list[int]] = {}  # category -> [done, total]

    def __enter__(self) -> "_Progress":
        self._phases.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._phases.__exit__(*exc)

    def update(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "category":
            category, total = event["category"], event["total"]
            self._counts[category] = [total - event["todo"], total]
            self._phases(category, *self._counts[category])
        elif kind == "entry":
            category = event["id"].rsplit("_", 1)[0]
            if category in self._counts:
                self._counts[category][0] += 1
                self._phases(category, *self._counts[category])
            if event.get("error"):
                self._phases.note(f"{event['id']}: {shorten(str(event['error']), 200)}")
        elif kind == "scored":
            self._phases.note(f"{event['category']}: {100 * event['accuracy']:.2f}% of {event['total']}")
