"""``cm2 bench``: run a policy on external benchmarks through their own loops and scorers.

``cm2 bench bfcl --policy oracle --limit 3 --out runs/bfcl-oracle`` runs BFCL v4 (``benchmarks.bfcl``), prints
the Table-3-style Markdown table and writes it plus a JSON report into ``--out``. With ``--json`` the last line
of stdout is one JSON object (``multi_turn_overall`` etc. in percent, 0-100). Progress goes to stderr.

``cm2 bench tau2 --policy oracle --user scripted --limit 5 --out runs/tau2-oracle`` runs τ²-bench
(``benchmarks.tau2``) the same way; its JSON line holds ``overall_pass1`` and the per-domain pass^k.

``cm2 bench toolsandbox --policy hf:PATH --python /path/to/toolsandbox-venv/bin/python --out runs/ts`` runs
ToolSandbox (``benchmarks.toolsandbox``) in its own environment; its JSON line holds ``overall_similarity``.
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
        with _BfclProgress(stderr) as progress:
            report = run_bfcl(options, on_event=progress.update)
    except (BfclError, SpecError) as exc:
        raise click.ClickException(str(exc)) from None
    _print_report(report, out / "bfcl_results", as_json)


@bench.command("tau2")
@click.option("--policy", required=True,
              help="oracle | noop | an endpoint spec (openai:http://127.0.0.1:8000/v1#model; runs tau2's own "
                   "llm_agent) | hf:PATH | module:attribute naming an agent (agents/base.py).")
@click.option("--user", required=True,
              help="The user simulator: an endpoint spec for tau2's LLM user simulator (the paper's setups use "
                   "gpt-4.1 at temperature 0), or 'scripted', the offline stand-in (tests; not comparable).")
@click.option("--domains", default="all", show_default=True, help="Comma-separated: all, airline, retail, telecom.")
@click.option("--trials", type=click.IntRange(min=1), default=4, show_default=True,
              help="Runs of each task (pass^k is reported for k <= trials).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N tasks of each domain.")
@click.option("--task-ids", default=None, help="Comma-separated task ids (in every domain selected).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory (tau2's result files, the report). Re-running with the same --out resumes.")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
              help="Simulations run in parallel.")
@click.option("--seed", type=int, default=300, show_default=True, help="tau2's run seed (trial seeds derive from it).")
@click.option("--max-steps", type=click.IntRange(min=1), default=200, show_default=True,
              help="tau2's step limit per simulation (a simulation that hits it scores 0).")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Sampling temperature of endpoint and hf: policies.")
@click.option("--json", "as_json", is_flag=True, help="End stdout with one JSON line of scores.")
def tau2(policy: str, user: str, domains: str, trials: int, limit: int | None, task_ids: str | None, out: Path,
         concurrency: int, seed: int, max_steps: int, temperature: float, as_json: bool) -> None:
    """Run POLICY on tau2-bench (airline, retail, telecom) through tau2's orchestrator and evaluators."""
    from rich.console import Console

    from benchmarks.tau2 import Tau2Error, Tau2Options, parse_domains, run_tau2

    stderr = Console(stderr=True)
    try:
        ids = [item.strip() for item in task_ids.split(",") if item.strip()] if task_ids else None
        options = Tau2Options(policy=policy, user=user, out=out, domains=parse_domains(domains), trials=trials,
                              limit=limit, task_ids=ids, concurrency=concurrency, seed=seed, max_steps=max_steps,
                              temperature=temperature)
        options.check()
        with _Tau2Progress(stderr) as progress:
            report = run_tau2(options, on_event=progress.update)
    except (Tau2Error, SpecError) as exc:
        raise click.ClickException(str(exc)) from None
    _print_report(report, out / "tau2_results", as_json)
    failed = sum(row["failed"] for row in report.domains.values())
    if failed:
        raise click.ClickException(f"{failed} simulation(s) failed (see the notes above); run the same command "
                                   "again to retry them: the run resumes")


@bench.command("toolsandbox")
@click.option("--policy", required=True,
              help="noop (ToolSandbox's unhelpful agent) | an endpoint spec (openai:http://127.0.0.1:8000/v1#model) "
                   "| hf:PATH | module:attribute naming an agent (agents/base.py); cm2 agents are served by cm2 serve.")
@click.option("--user", default="scripted", show_default=True,
              help="'scripted' (ends the conversation at the agent's first answer; multi-user-turn scenarios are "
                   "skipped) or an endpoint spec for ToolSandbox's LLM user simulator (the paper: GPT-4o).")
@click.option("--python", "python", default=None, envvar="CM2_TOOLSANDBOX_PYTHON",
              help="Interpreter of the environment where ToolSandbox is installed [env: CM2_TOOLSANDBOX_PYTHON].")
@click.option("--categories", default=None, help="Comma-separated columns (STC, MUT, 3-DT, ...) or ToolSandbox "
                                                 "category names: keep scenarios in any of them.")
@click.option("--scenarios", default=None, help="Comma-separated ToolSandbox scenario names.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N selected scenarios.")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
              help="Scenarios played in parallel (one process each: ToolSandbox keeps global state).")
@click.option("--skip-rapidapi/--no-skip-rapidapi", default=None,
              help="Skip scenarios that need RapidAPI's live tools [default: skip unless RAPID_API_KEY is set]. "
                   "Skipped scenarios are listed, never scored 0.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Sampling temperature of hf: policies.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory (results.jsonl, ToolSandbox's trajectories, the report). Re-running resumes.")
@click.option("--json", "as_json", is_flag=True, help="End stdout with one JSON line of scores.")
def toolsandbox(policy: str, user: str, python: str | None, categories: str | None, scenarios: str | None,
                limit: int | None, concurrency: int, skip_rapidapi: bool | None, temperature: float, out: Path,
                as_json: bool) -> None:
    """Run POLICY on ToolSandbox through its own scenario loop and milestone evaluation."""
    from rich.console import Console

    from benchmarks.toolsandbox import ToolSandboxError, ToolSandboxOptions, run_toolsandbox

    split = lambda text: [item.strip() for item in text.split(",") if item.strip()] if text else None  # noqa: E731
    stderr = Console(stderr=True)
    try:
        options = ToolSandboxOptions(policy=policy, user=user, python=python or "", out=out,
                                     categories=split(categories), scenarios=split(scenarios), limit=limit,
                                     concurrency=concurrency, skip_rapidapi=skip_rapidapi, temperature=temperature)
        with _ToolSandboxProgress(stderr) as progress:
            report = run_toolsandbox(options, on_event=progress.update)
    except (ToolSandboxError, SpecError) as exc:
        raise click.ClickException(str(exc)) from None
    _print_report(report, out / "toolsandbox_results", as_json)
    if not report.complete:
        raise click.ClickException("; ".join(report.notes) + ". Run the same command again to retry them: the run "
                                   "resumes")


def _print_report(report: Any, stem: Path, as_json: bool) -> None:
    """The report's Markdown table on stdout, or on stderr with one JSON line on stdout (``--json``)."""
    if as_json:
        click.echo(report.markdown(), err=True)
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(report.markdown())
        click.echo(f"Report: {stem}.md and {stem}.json ({report.elapsed_s:.1f} s)")


class _PhaseProgress:
    """A benchmark's events as progress phases (:class:`cm2_env.progress.Phases`), one per category or domain;
    subclasses turn events into ``self._counts`` (phase -> [done, total]) updates and notes."""

    def __init__(self, console: Any) -> None:
        from cm2_env.progress import Phases

        self._phases = Phases(console=console)
        self._counts: dict[str, list[int]] = {}

    def __enter__(self) -> "_PhaseProgress":
        self._phases.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._phases.__exit__(*exc)

    def _start(self, phase: str, total: int, todo: int) -> None:
        self._counts[phase] = [total - todo, total]
        self._phases(phase, *self._counts[phase])

    def _advance(self, phase: str) -> None:
        if phase in self._counts:
            self._counts[phase][0] += 1
            self._phases(phase, *self._counts[phase])


class _Tau2Progress(_PhaseProgress):
    """One progress phase per domain; failed simulations become notes."""

    def update(self, event: dict[str, Any]) -> None:
        domain = event.get("domain", "")
        if event.get("event") == "domain":
            self._start(domain, event["total"], event["todo"])
        elif event.get("event") == "simulation":
            self._advance(domain)
            if event.get("error"):
                self._phases.note(f"{domain} task {event['task_id']} trial {event['trial']}: "
                                  f"{shorten(str(event['error']), 200)}")


class _ToolSandboxProgress(_PhaseProgress):
    """One progress phase for the run; scenarios that raised become notes."""

    def update(self, event: dict[str, Any]) -> None:
        if event.get("event") == "start":
            self._start("scenarios", event["total"], event["todo"])
            if event.get("skipped"):
                self._phases.note(f"{event['skipped']} scenarios skipped (listed in the report)")
        elif event.get("event") == "scenario":
            self._advance("scenarios")
            if event.get("exception_type"):
                self._phases.note(f"{event['name']}: {event['exception_type']} (scored 0, as ToolSandbox does)")


class _BfclProgress(_PhaseProgress):
    """The BFCL worker's events: one progress phase per category."""

    def update(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "category":
            self._start(event["category"], event["total"], event["todo"])
        elif kind == "entry":
            self._advance(event["id"].rsplit("_", 1)[0])
            if event.get("error"):
                self._phases.note(f"{event['id']}: {shorten(str(event['error']), 200)}")
        elif kind == "scored":
            self._phases.note(f"{event['category']}: {100 * event['accuracy']:.2f}% of {event['total']}")
