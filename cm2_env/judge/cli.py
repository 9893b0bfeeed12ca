"""``cm2 judge``: evaluate checklist judges against gold verdicts (``cm2 judge eval``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

RULE_NOTE = ("note: the rule judge is a deterministic, offline APPROXIMATION of an LLM judge (structure and "
             "evidence matching only); use an LLM judge for training rewards when one is available.")


@click.group()
def judge() -> None:
    """Evaluate checklist judges against gold verdicts."""


@judge.command("eval")
@click.option("--judge", "judge_spec", default="rule", show_default=True,
              help="rule | openai:URL#model | hybrid:openai:URL#model")
@click.option("--calibration", "calibration_path", default=None,
              help="gold-verdict JSONL (default: the bundled calibration set)")
@click.option("--dialogues", default="tooltalk", show_default=True, help="bundled dataset name or path")
@click.option("--json", "as_json", is_flag=True, help="end with one JSON line holding every metric")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="only the first N candidates")
@click.option("--votes", type=int, default=1, show_default=True, help="LLM judge: votes per question")
@click.option("--batch-items", is_flag=True, help="LLM judge: all items of an action in one request")
@click.option("--temperature", type=float, default=None, help="LLM judge sampling temperature (default 0.6)")
@click.option("--top-p", type=float, default=None, help="LLM judge nucleus sampling (default 0.8, as released)")
@click.option("--max-prompt-chars", type=click.IntRange(min=1000), default=None,
              help="LLM judge prompt budget in characters (default: no limit; longer prompts are cut, marked)")
@click.option("--threshold", type=float, default=0.85, show_default=True,
              help="rule confidence a hybrid judge keeps (also the confident slice of the report)")
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True, help="candidates judged at once")
def eval_command(judge_spec: str, calibration_path: str | None, dialogues: str, as_json: bool, limit: int | None,
                 votes: int, batch_items: bool, temperature: float | None, top_p: float | None,
                 max_prompt_chars: int | None, threshold: float, concurrency: int) -> None:
    """Run a judge on every calibration candidate, judging after every action as in training (sticky), and
    report accuracy, precision/recall of "pass", per focus and per candidate kind, first-action agreement,
    vote agreement, LLM calls and tokens."""
    from cm2_env.data.io import DatasetError, load_dialogues
    from cm2_env.judge import make_judge
    from cm2_env.judge.calibration import load_calibration

    try:
        cases = load_calibration(calibration_path)
        dialogue_set = load_dialogues(dialogues)
    except (DatasetError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    if limit is not None:
        cases = cases[:limit]
    options: dict[str, Any] = {}
    if judge_spec.strip() != "rule":
        options = {"votes": votes, "batch_items": batch_items, "temperature": temperature, "top_p": top_p,
                   "max_prompt_chars": max_prompt_chars}
        if judge_spec.startswith("hybrid:"):
            options["threshold"] = threshold
    try:
        judge_obj = make_judge(judge_spec, **options)
    except (ValueError, TypeError) as exc:
        raise click.ClickException(f"--judge {judge_spec!r}: {exc}") from exc
    if judge_spec.strip() in ("rule",) or judge_spec.startswith("hybrid:"):
        click.echo(RULE_NOTE, err=as_json)
    report = asyncio.run(_run(judge_obj, cases, dialogue_set, concurrency, threshold, progress=not as_json))
    result = {"judge": judge_spec, **report.to_dict()}
    _print_tables(result, err=as_json)
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))


async def _run(judge_obj: Any, cases: list, dialogue_set: list, concurrency: int, threshold: float,
               progress: bool) -> Any:
    from cm2_env.judge.calibration import evaluate
    from cm2_env.progress import Phases

    done = 0
    with Phases(enabled=progress) as bars:
        def on_case(_: Any) -> None:
            nonlocal done
            done += 1
            bars("judging", done, len(cases))

        return await evaluate(judge_obj, cases, dialogue_set, concurrency=concurrency, threshold=threshold,
                              on_case=on_case)


def _print_tables(result: dict[str, Any], err: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=err)
    table = Table(title=f"judge {result['judge']}: {result['n']} verdicts on {result['cases']} candidates")
    for column in ("slice", "n", "accuracy", "precision", "recall", "f1", "errors"):
        table.add_column(column, justify="left" if column == "slice" else "right")

    def row(name: str, m: dict[str, Any]) -> None:
        table.add_row(name, str(m["n"]), f"{m['accuracy']:.3f}", f"{m['precision']:.3f}", f"{m['recall']:.3f}",
                      f"{m['f1']:.3f}", str(m["errors"]))

    row("all", result)
    short = {"assistant.content.user_visible_reply": "reply", "assistant.content.thinking": "thinking",
             "assistant.tool_calls": "tool calls", "tool.content": "tool results"}
    for name, m in result["by_focus"].items():
        row(f"focus: {short.get(name, name)}", m)
    for name, m in result["by_kind"].items():
        row(f"kind: {name}", m)
    confident = result.get("confident")
    if confident:
        row(f"confidence >= {confident['threshold']:g}", confident)
    console.print(table)
    if confident:
        console.print(f"verdicts below confidence {confident['threshold']:g} (a hybrid judge asks its LLM about "
                      f"these): {confident['share_below']:.1%}")
    first = result["first_action_agreement"]
    rate = "n/a" if first["rate"] is None else f"{first['rate']:.3f}"
    votes = "n/a" if result["vote_agreement"] is None else f"{result['vote_agreement']:.3f}"
    usage = result["usage"]
    console.print(f"first-action agreement {rate} (n={first['n']}); vote agreement {votes}; "
                  f"LLM calls {usage.get('llm_calls', 0)}, tokens {usage.get('prompt_tokens', 0)} prompt + "
                  f"{usage.get('completion_tokens', 0)} completion")
