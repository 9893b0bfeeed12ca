"""``cm2 rollout``: run a policy in CM2ToolUse-v0 on a dataset and write trajectories plus a summary."""

from __future__ import annotations

import json
import time

import click

from cm2_env.reward import ASSIGNMENT_MODES


@click.command("rollout")
@click.option("--dataset", default="tooltalk", show_default=True, help="Bundled dataset name or JSONL path.")
@click.option("--agent", "agent_spec", default="replay", show_default=True,
              help="replay | probe:KIND[+calls] | openai:URL#model | hf:PATH | MODULE:ATTRIBUTE")
@click.option("--simulator", default="replay", show_default=True, help="replay | openai:URL#model")
@click.option("--judge", default="rule", show_default=True, help="rule | openai:URL#model | hybrid:openai:URL#model")
@click.option("--group-size", "-G", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Run directory for trajectories.jsonl and summary.json.")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Use only the first N dialogues.")
@click.option("--concurrency", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--reward-assignment", default="trajectory", show_default=True,
              type=click.Choice(ASSIGNMENT_MODES))
@click.option("--temperature", default=None, type=float, help="Sampling temperature for model agents (endpoint and hf: agents).")
@click.option("--max-new-tokens", default=None, type=int, help="Generation budget per action (hf: agents).")
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Finish the run in --out: skip the episodes already written there.")
@click.option("--overwrite", is_flag=True, help="Replace the episodes already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on the last line.")
def rollout(dataset, agent_spec, simulator, judge, group_size, out_dir, limit, concurrency, reward_assignment,
            temperature, max_new_tokens, seed, resume, overwrite, as_json):
    """Run AGENT on every dialogue of DATASET (G episodes each) and summarise the checklist rewards.

    With --out, each episode is written to OUT/trajectories.jsonl as soon as it ends; a run that was stopped is
    finished with --resume."""
    from agents import make_agent
    from agents.rollout import llm_usage, run_rollouts, summarize
    from cm2_env.data import load_dialogues
    from cm2_env.judge import make_judge
    from cm2_env.simulator import make_simulator
    from cm2_env.specs import parse

    if (resume or overwrite) and not out_dir:
        raise click.UsageError("--resume and --overwrite need --out")
    if resume and overwrite:
        raise click.UsageError("give --resume or --overwrite, not both")
    dialogues = load_dialogues(dataset)[:limit]
    options = {}
    kind = parse(agent_spec, "policy").kind
    if temperature is not None and kind in ("endpoint", "hf"):
        options["temperature"] = temperature
    if max_new_tokens is not None and kind == "hf":
        options["max_new_tokens"] = max_new_tokens
    agent = make_agent(agent_spec, dialogues, **options)
    simulator_backend, judge_backend = make_simulator(simulator), make_judge(judge)
    if judge == "rule":
        click.echo("note: the rule judge is an offline approximation of an LLM judge (see docs); "
                   "use an LLM judge for training-quality rewards.", err=True)
    run_info = {"dataset": dataset, "agent": agent_spec, "simulator": simulator, "judge": judge, "limit": limit,
                "reward_assignment": reward_assignment, "temperature": temperature, "max_new_tokens": max_new_tokens}
    start = time.perf_counter()
    results = run_rollouts(
        dialogues, agent, group_size=group_size, concurrency=concurrency, out_dir=out_dir, seed=seed,
        env_kwargs={"simulator": simulator_backend, "judge": judge_backend, "reward_assignment": reward_assignment},
        resume=resume, overwrite=overwrite, run_info=run_info,
    )
    summary = summarize(results, dialogues)
    summary["llm"] = llm_usage(agent, simulator_backend, judge_backend)
    summary["wall_s"] = round(time.perf_counter() - start, 3)
    _print_table(summary, agent_spec)
    for role, usage in summary["llm"].items():
        if usage.get("circuit_open"):
            click.echo(f"{role} endpoint down: {usage['circuit_open']} call(s) failed at once with the circuit "
                       f"open, {usage.get('failures', 0)} failed in all; see the failed episodes' failure field",
                       err=True)
    if out_dir:
        click.echo(f"trajectories and summary written to {out_dir}", err=as_json)
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
    for role, usage in summary.get("llm", {}).items():
        table.add_row(f"LLM calls: {role}", f"{usage.get('calls', 0)} ({usage.get('requests', 0)} requests, "
                                            f"{usage.get('failures', 0)} failed)")
    if not summary.get("llm"):
        table.add_row("LLM calls", "0")
    Console(stderr=False).print(table)


@click.command("serve")
@click.option("--agent", "agent_spec", required=True,
              help="hf:PATH (e.g. a cm2 train output: runs/tiny-cpu/grpo/final) | replay | probe:KIND | "
                   "openai:URL#model | MODULE:ATTRIBUTE")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (loopback by default; 0.0.0.0 exposes the policy to the network).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port (0: any free port; the URL is printed).")
@click.option("--served-model-name", "model_name", default="cm2-policy", show_default=True,
              help="The model name clients must send.")
@click.option("--dataset", default="tooltalk", show_default=True,
              help="Dialogues for replay and probe agents (a request's dialogue is found by its first user message "
                   "or metadata.dialogue_id).")
@click.option("--temperature", default=None, type=float, help="Sampling temperature (endpoint and hf: agents).")
@click.option("--max-new-tokens", default=None, type=int, help="Generation budget per answer (hf: agents).")
@click.option("--api-key-env", default=None, metavar="VAR",
              help="Require 'Authorization: Bearer KEY' with KEY read from this environment variable.")
def serve(agent_spec, host, port, model_name, dataset, temperature, max_new_tokens, api_key_env):
    """Serve a policy as an OpenAI-compatible chat endpoint (/v1/chat/completions, /v1/models) until
    SIGINT/SIGTERM."""
    import asyncio
    import logging
    import os

    from agents import make_agent
    from agents.serve import ChatServer, bound_url, uvicorn_server
    from cm2_env.data import load_dialogues
    from cm2_env.specs import parse

    kind = parse(agent_spec, "policy").kind
    dialogues = load_dialogues(dataset) if kind in ("replay", "probe") else []
    options = {}
    if temperature is not None and kind in ("endpoint", "hf"):
        options["temperature"] = temperature
    if max_new_tokens is not None and kind == "hf":
        options["max_new_tokens"] = max_new_tokens
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise click.UsageError(f"--api-key-env {api_key_env}: that environment variable is not set")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    http = uvicorn_server(ChatServer(make_agent(agent_spec, dialogues, **options), model_name, dialogues, api_key),
                          host, port)

    async def run() -> None:
        task = asyncio.create_task(http.serve())
        while not http.started and not task.done():
            await asyncio.sleep(0.05)
        if http.started:
            click.echo(f"cm2 serve: {agent_spec} as model {model_name!r} at {bound_url(http)} "
                       "(Ctrl-C or SIGTERM stops it)", err=True)
        await task

    asyncio.run(run())
    if not http.started:
        raise click.ClickException(f"could not serve on {host}:{port} (see the log above)")
    click.echo("cm2 serve: stopped", err=True)
