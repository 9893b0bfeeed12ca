"""``cm2 rollout``: run a policy in CM2ToolUse-v0 on a dataset and write trajectories plus a summary."""

from __future__ import annotations

import json
import sys
import time

import click


@click.command("rollout")
@click.option("--dataset", default="tooltalk", show_default=True, help="Bundled dataset name or JSONL path.")
@click.option("--agent", "agent_spec", default="replay", show_default=True,
              help="replay | openai:URL#model | hf:PATH")
@click.option("--simulator", default="replay", show_default=True, help="replay | openai:URL#model")
@click.option("--judge", default="rule", show_default=True, help="rule | openai:URL#model | hybrid:openai:URL#model")
@click.option("--group-size", "-G", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Run directory for trajectories.jsonl and summary.json.")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Use only the first N dialogues.")
@click.option("--concurrency", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--reward-assignment", default="trajectory", show_default=True,
              type=click.Choice(["step", "turn", "trajectory"]))
@click.option("--temperature", default=None, type=float, help="Sampling temperature for model agents.")
@click.option("--max-new-tokens", default=None, type=int, help="Generation budget per action (hf: agents).")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on the last line.")
def rollout(dataset, agent_spec, simulator, judge, group_size, out_dir, limit, concurrency, reward_assignment,
            temperature, max_new_tokens, seed, as_json):
    """Run AGENT on every dialogue of DATASET (G episodes each) and summarise the checklist rewards."""
    from agents import make_agent
    from agents.rollout import run_rollouts, summarize
    from cm2_env.data import load_dialogues

    dialogues = load_dialogues(dataset)[:limit]
    options = {}
    if temperature is not None:
        options["temperature"] = temperature
    if max_new_tokens is not None and agent_spec.startswith("hf:"):
        options["max_new_tokens"] = max_new_tokens
    agent = make_agent(agent_spec, dialogues, **options)
    if judge == "rule":
        click.echo("note: the rule judge is an offline approximation of an LLM judge (see docs); "
                   "use an LLM judge for training-quality rewards.", err=True)
    start = time.perf_counter()
    results = run_rollouts(
        dialogues, agent, group_size=group_size, concurrency=concurrency, out_dir=out_dir, seed=seed,
        env_kwargs={"simulator": simulator, "judge": judge, "reward_assignment": reward_assignment},
        progress=sys.stderr.isatty(),
    )
    summary = summarize(results, dialogues)
    summary["wall_s"] = round(time.perf_counter() - start, 3)
    _print_table(summary, agent_spec)
    if out_dir:
        click.echo(f"trajectories and summary written to {out_dir}")
    if as_json:
        click.echo(json.dumps({k: v for k, v in summary.items()}))


def _print_table(summary: dict, agent_spec: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"rollout summary ({agent_spec})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    mean = summary["mean_reward"]
    table.add_row("episodes", str(summary["episodes"]))
    table.add_row("mean reward", "n/a" if mean is None else f"{mean:.4f}")
    table.add_row("failed episodes", str(summary["failed"]))
    table.add_row("ended early (strictness)", str(summary["ended_early"]))
    table.add_row("truncated", str(summary["truncated"]))
    for focus, row in summary["items_passed_by_focus"].items():
        rate = "n/a" if row["rate"] is None else f"{row['rate']:.3f}"
        table.add_row(f"passed: {focus}", f"{row['passed']}/{row['judged']} ({rate})")
    llm_calls = sum(v for k, v in summary["usage"].items() if k.endswith("llm_calls"))
    table.add_row("LLM calls", str(llm_calls))
    Console(stderr=False).print(table)
