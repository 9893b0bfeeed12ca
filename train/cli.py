"""``cm2 train`` and ``cm2 sft``: the command line of the training harness.

- ``cm2 train --preset tiny-cpu [--out DIR] [--seed N] [--json]``: the self-contained tiny run (train.presets).
- ``cm2 train --config FILE [--resume auto|DIR] [--json]``: GRPO as configured (train.grpo).
- ``cm2 sft --config FILE [--json]``: cold-start SFT as configured (train.sft).

Progress bars and the summary table go to stderr when ``--json`` is given, so the last stdout line is exactly
one JSON object (``reward_before``/``reward_after`` for the preset).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from cm2_env.progress import Phases
from train.presets import PRESETS


def _console(to_stderr: bool):
    from rich.console import Console

    return Console(stderr=to_stderr)


def _table(title: str, rows: list[tuple[str, Any]]):
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in rows:
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


class BadInput(click.ClickException):
    """Bad input (a config, a path, a value): its message, exit status 2 like click's usage errors."""

    exit_code = 2


def _fail(exc: Exception) -> None:
    raise BadInput(str(exc)) from exc


@click.command(name="train")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help="Run a self-contained preset (tiny-cpu-quick: the shorter variant the tests run).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="YAML config (GRPO).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (preset: default runs/tiny-cpu; config: overrides output_dir).")
@click.option("--seed", type=int, default=None, help="Seed (default: 0, or the config's).")
@click.option("--resume", default=None, help="Config runs: 'auto' or a checkpoint folder.")
@click.option("--overwrite", is_flag=True, help="Config runs: replace an earlier run in the output folder.")
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: one JSON object with the results.")
def train(preset: str | None, config_path: str | None, out: str | None, seed: int | None, resume: str | None,
          overwrite: bool, as_json: bool) -> None:
    """GRPO with checklist rewards: --preset tiny-cpu (offline demo) or --config FILE (real runs)."""
    if (preset is None) == (config_path is None):
        raise click.UsageError("give exactly one of --preset tiny-cpu or --config FILE")
    console = _console(to_stderr=as_json)
    if preset is not None:
        from train.presets import run_tiny_cpu

        with Phases(console=console) as bars:
            try:
                summary = run_tiny_cpu(out or "runs/tiny-cpu", seed=seed or 0, preset=preset, on_progress=bars)
            except (ValueError, FileNotFoundError) as exc:
                _fail(exc)
        t = summary["timings"]
        console.print(_table(f"cm2 train --preset {preset} (seed {summary['seed']})", [
            (f"reward before GRPO (SFT; {summary['eval_samples']} samples/dialogue, T={summary['eval_temperature']})",
             summary["reward_before"]),
            ("reward after GRPO (same seed and settings)", summary["reward_after"]),
            ("improvement", summary["improvement"]),
            ("greedy reward before / after", f"{summary['greedy_before']:.4f} / {summary['greedy_after']:.4f}"),
            ("eval dialogues", summary["eval_dialogues"]),
            ("GRPO steps", summary["grpo_steps"]),
            ("failed episodes (excluded)", summary["failed_episodes"]),
            ("time: build / sft / grpo = training (s)",
             f"{t['build_s']} / {t['sft_s']} / {t['grpo_s']} = {summary['train_seconds']}"),
            ("time: evaluations / total (s)", f"{t['eval_before_s'] + t['eval_after_s']:.2f} / {t['total_s']}"),
            ("reward curve", summary["paths"]["reward_curve"]),
        ]))
        if as_json:
            result = {k: v for k, v in summary.items() if k != "eval"}
            click.echo(json.dumps(result))
        return

    from train.config import ConfigError, load_config
    from train.grpo import train as run_grpo

    try:
        config = load_config(config_path, output_dir=out, seed=seed, resume=resume)
    except ConfigError as exc:
        _fail(exc)
    import os

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports (train.distributed)
    with Phases(enabled=config.progress and main_rank, console=console) as bars:
        try:
            result = run_grpo(config, overwrite=overwrite,
                              on_step=lambda s, r: bars("grpo", s, config.steps, {"reward": r.get("reward/mean"),
                                                                                  "kl": r.get("kl")}))
        except (ValueError, FileNotFoundError) as exc:
            _fail(exc)
    if not main_rank:
        return
    last = result.records[-1] if result.records else {}
    console.print(_table(f"cm2 train --config {config_path}", [
        ("steps", result.steps_done), ("final reward (mean)", last.get("reward/mean")),
        ("failed episodes (excluded)", result.failed_episodes), ("output", str(result.output_dir)),
        ("seconds", round(result.seconds, 1)),
    ]))
    if as_json:
        click.echo(json.dumps({"steps": result.steps_done, "reward_last": last.get("reward/mean"),
                               "failed_episodes": result.failed_episodes, "output_dir": str(result.output_dir),
                               "final_model": str(result.final_dir) if result.final_dir else None,
                               "train_seconds": round(result.seconds, 2)}))


@click.command(name="sft")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True, help="YAML config.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Overrides the sft section's output_dir.")
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: one JSON object with the results.")
def sft(config_path: str, out: str | None, as_json: bool) -> None:
    """Cold-start SFT on dialogues (loss on assistant tokens only)."""
    from train.config import ConfigError, load_sft_config
    from train.sft import run_sft

    try:
        config = load_sft_config(config_path, output_dir=out)
    except ConfigError as exc:
        _fail(exc)
    console = _console(to_stderr=as_json)
    with Phases(enabled=config.progress, console=console) as bars:
        try:
            result = run_sft(config, on_step=lambda s, n, loss: bars("sft", s, n, {"loss": loss}))
        except (ValueError, FileNotFoundError) as exc:
            _fail(exc)
    console.print(_table(f"cm2 sft --config {config_path}", [
        ("optimizer steps", result.steps), ("final loss", result.losses[-1] if result.losses else None),
        ("loss tokens", result.tokens), ("saved to", str(result.out_dir)), ("seconds", round(result.seconds, 1)),
        ("special-token embeddings initialised", ", ".join(result.initialised_tokens) or "no"),
    ]))
    if as_json:
        click.echo(json.dumps({"steps": result.steps, "final_loss": result.losses[-1] if result.losses else None,
                               "output_dir": str(result.out_dir), "seconds": result.seconds}))


if __name__ == "__main__":  # pragma: no cover
    train(sys.argv[1:])
