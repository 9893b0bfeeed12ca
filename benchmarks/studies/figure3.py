"""The CM2 paper's Figure 3, re-run small: assignment granularity, group size and judge noise on a tiny model.

    python -m benchmarks.studies.figure3 --out DIR [--quick] [--workers 2] [--seeds 0,1,2] [--steps 30]

What it runs (docs/studies/figure3.md):

- One start for every run: the tiny-cpu preset's model and SFT (all bundled dialogues), built once in
  ``DIR/start``.
- GRPO runs that differ in one factor each, everything else equal (the tiny-cpu preset's recipe, on the first
  :data:`TURNS` turns of each dialogue with ``strict`` off, so that every episode has several turns and turn-level
  credit differs from trajectory-level credit -- with one turn the two are the same run):
  assignment (``advantage_level`` step / turn / trajectory) x group size G in {4, 8, 16}, and assignment x judge
  noise p in {0.05, 0.15} at G = 8 (p = 0 is shared with the G grid), each on every seed. Judge noise is the
  ``noisy:P:rule`` training judge (:class:`cm2_env.judge.NoisyJudge`): each verdict flipped with probability p,
  seeded; validation is always judged by the clean rule judge (``validation_judge``).
- Training dialogues: :data:`TRAIN` dialogues whose first :data:`TURNS` turns have checklist items; validation:
  the next :data:`VALIDATION` ones, held out from RL (not from SFT), measured before training and every
  ``--interval`` steps (``validation_dialogues``, ``validation_interval``: the trainer's own validation,
  ``eval_samples`` sampled episodes per dialogue).
- Each run is ``cm2 train --config`` in its own process (``--workers`` at a time, one thread each), writing
  ``DIR/runs/<name>``. A finished run is skipped when the study is run again; an interrupted one resumes from
  its last checkpoint. Then ``DIR/results.json``, ``DIR/table.md`` and ``DIR/figure3.png`` (validation reward vs
  step, one panel per factor, mean and min-max band over seeds; and the second half's validation reward against
  judge noise, a line per assignment) are written from the runs' metrics.

``--quick`` is a smoke test of the machinery (a micro model, 2 steps, a reduced grid): its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ASSIGNMENTS = ("step", "turn", "trajectory")
GROUP_SIZES = (4, 8, 16)
NOISE = (0.05, 0.15)
NOISE_G = 8
TRAIN, VALIDATION = 24, 8
TURNS = 2


@dataclass(frozen=True)
class Run:
    assignment: str
    group_size: int
    noise: float
    seed: int

    quick: bool = False

    @property
    def name(self) -> str:
        return f"{'quick-' if self.quick else ''}{self.assignment}-G{self.group_size}-p{self.noise:g}-s{self.seed}"


def grid(seeds: list[int], quick: bool = False) -> list[Run]:
    """Every run of the study: assignment x G at p = 0, and assignment x p at G = NOISE_G (the p = 0 run is the
    G grid's), seed after seed. ``quick``: two assignments, G in {2, 4}, p in {0, 0.15} at G = 2."""
    assignments, sizes, noise, noise_g = ((("step", "trajectory"), (2, 4), (0.15,), 2) if quick
                                          else (ASSIGNMENTS, GROUP_SIZES, NOISE, NOISE_G))
    # seed by seed: an interrupted study has whole seeds of every configuration
    return [run for s in seeds for run in ([Run(a, g, 0.0, s, quick) for a in assignments for g in sizes]
                                           + [Run(a, noise_g, p, s, quick) for a in assignments for p in noise])]


def split(quick: bool, validation: int = VALIDATION) -> tuple[list[str], list[str]]:
    """Training and held-out validation dialogue ids: dialogues whose first TURNS turns have items, in bundled
    order."""
    from cm2_env.data import load_dialogues

    ids = [d.id for d in load_dialogues("tooltalk")
           if len(d.checklist()) >= TURNS and all(d.checklist()[t] for t in range(TURNS))]
    n_train, n_val = (2, 2) if quick else (TRAIN, validation)
    return ids[:n_train], ids[n_train:n_train + n_val]


def prepare_start(out: Path, quick: bool) -> Path:
    """The SFT model every run starts from (built once; reused when it exists)."""
    folder = out / "start"
    model = folder / ("sft" if not quick else "micro")
    if (model / "config.json").is_file():
        return model
    from train.tiny_model import build_tiny

    if quick:
        return build_tiny(model, preset="micro", seed=0)
    from cm2_env.data import load_dialogues
    from train.presets import preset_configs
    from train.sft import run_sft

    _, sft_config = preset_configs("tiny-cpu", folder, seed=0)
    build_tiny(folder / "model", preset="tiny-cpu", seed=0)
    run_sft(sft_config, dialogues=load_dialogues("tooltalk"))
    return Path(sft_config.output_dir)


def run_config(run: Run, start: Path, out: Path, args: argparse.Namespace, train_ids: list[str],
               validation_ids: list[str]) -> dict[str, Any]:
    """The run's config: the tiny-cpu recipe with the run's factors (public config knobs only)."""
    from train.presets import TINY_CPU

    values = {key: value for key, value in TINY_CPU.items() if key not in ("sft", "max_dialogues")}
    values.update(
        model=str(start), output_dir=str(out / "runs" / run.name), seed=run.seed,
        advantage_level=run.assignment, group_size=run.group_size,
        judge="rule" if run.noise == 0 else f"noisy:{run.noise:g}:rule", validation_judge="rule",
        max_turns=TURNS, strict=False, max_actions=3 * TURNS,
        dialogue_ids=train_ids, prompts_per_step=args.prompts, steps=args.steps,
        validation_dialogues=validation_ids, validation_interval=args.interval, eval_dialogues=0,
        eval_samples=args.eval_samples, eval_temperature=1.0, checkpoint_interval=max(1, args.steps // 3),
        rollout_log_interval=0, num_threads=1, progress=False,
    )
    if args.quick:
        values.update(max_new_tokens=8, micro_batch_tokens=2048)
    return values


def finished(folder: Path, steps: int) -> bool:
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        return False
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return any(r.get("step") == steps and "validation/mean_reward" in r for r in rows)


def launch(run: Run, config: dict[str, Any], out: Path, steps: int) -> dict[str, Any]:
    """Run (or resume, or skip) one ``cm2 train --config``; returns its name, status and seconds. A run folder
    remembers its config (``study_config.json``): one made with other settings is refused, never mixed."""
    folder = Path(config["output_dir"])
    stamp = folder / "study_config.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != config:
        return {"run": run.name, "status": f"refused: {folder} was made with other settings (pass another --out, "
                                          "or delete the folder to run it again)", "seconds": 0.0}
    if finished(folder, steps):
        return {"run": run.name, "status": "done before", "seconds": 0.0}
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(config, indent=1, sort_keys=True))
    config_path = out / "configs" / f"{run.name}.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    resume = "auto" if (folder / "checkpoints").is_dir() else ""
    config_path.write_text(yaml.safe_dump({**config, "resume": resume}, sort_keys=False))
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with (out / "logs").joinpath(f"{run.name}.log").open("w") as log:
        code = subprocess.run([sys.executable, "-m", "train", "--config", str(config_path),
                               *(["--overwrite"] if not resume else [])],
                              stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    return {"run": run.name, "status": "ok" if code == 0 else f"failed (exit {code}, see logs/{run.name}.log)",
            "seconds": round(time.perf_counter() - started, 1)}


def curves(out: Path, runs: list[Run], steps: int) -> dict[str, dict[str, Any]]:
    """Per finished run: validation reward by step (step 0 = before training) and training reward by step.
    Unfinished or failed runs are left out (a seed's partial curve would cut its configuration's band short)."""
    results = {}
    for run in runs:
        metrics = out / "runs" / run.name / "metrics.jsonl"
        if not finished(metrics.parent, steps):
            continue
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        results[run.name] = {
            "assignment": run.assignment, "group_size": run.group_size, "noise": run.noise, "seed": run.seed,
            "validation": {r["step"]: r["validation/mean_reward"] for r in rows if "validation/mean_reward" in r},
            "train": {r["step"]: r["reward/mean"] for r in rows if "reward/mean" in r},
        }
    return results


def panels(results: dict[str, dict[str, Any]], quick: bool) -> list[tuple[str, dict[str, list[dict[str, Any]]]]]:
    """The figure's panels: (title, {line label: runs}) -- granularity at G = NOISE_G (p = 0), group size per
    assignment (trajectory, p = 0), and judge noise per assignment at G = NOISE_G."""
    noise_g = 2 if quick else NOISE_G
    by: dict[str, dict[str, list[dict[str, Any]]]] = {"granularity (G %d, p 0)" % noise_g: {},
                                                       "group size (trajectory, p 0)": {},
                                                       "judge noise (G %d)" % noise_g: {}}
    titles = list(by)
    for r in results.values():
        if r["noise"] == 0 and r["group_size"] == noise_g:
            by[titles[0]].setdefault(r["assignment"], []).append(r)
        if r["noise"] == 0 and r["assignment"] == "trajectory":
            by[titles[1]].setdefault(f"G {r['group_size']}", []).append(r)
        if r["group_size"] == noise_g:
            by[titles[2]].setdefault(f"{r['assignment']}, p {r['noise']:g}", []).append(r)
    return list(by.items())


def band(members: list[dict[str, Any]], key: str = "validation") -> tuple[list[int], list[float], list[float],
                                                                       list[float]]:
    """Steps present in every member, with the mean, min and max over seeds."""
    steps = sorted(set.intersection(*(set(m[key]) for m in members))) if members else []
    values = [[m[key][s] for m in members] for s in steps]
    return steps, [statistics.fmean(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def table(results: dict[str, dict[str, Any]]) -> str:
    """Per configuration (seeds pooled): validation reward before and best of the mean curve, over the second
    half of training (:func:`late_reward`) and last (each with its min-max over seeds), last - best of the mean
    curve and the mean of each seed's own last - best (a collapse shows as a negative drop; a seed's own peak is
    higher than the mean curve's), and the training reward over the last quarter of the steps."""
    groups: dict[tuple[str, int, float], list[dict[str, Any]]] = {}
    for r in results.values():
        groups.setdefault((r["assignment"], r["group_size"], r["noise"]), []).append(r)
    lines = ["| assignment | G | p | seeds | last step | val. before | val. best | val. 2nd half (min-max) | "
             "val. last (min-max) | last - best | per seed: last - best | train reward (last 1/4) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (assignment, g, p), members in sorted(groups.items()):
        steps, mean, _, _ = band(members)
        if not steps:
            continue
        train_steps = sorted(set.intersection(*(set(m["train"]) for m in members)))
        tail = train_steps[-max(1, len(train_steps) // 4):]
        train_tail = statistics.fmean(statistics.fmean(m["train"][s] for s in tail) for m in members) if tail else 0
        lasts = [m["validation"][steps[-1]] for m in members]
        lates = [late_reward(m) for m in members]
        own_drop = statistics.fmean(m["validation"][steps[-1]] - max(m["validation"][s] for s in steps)
                                    for m in members)
        lines.append(f"| {assignment} | {g} | {p:g} | {len(members)} | {steps[-1]} | {mean[0]:.3f} | {max(mean):.3f} | "
                     f"{statistics.fmean(lates):.3f} ({min(lates):.3f}-{max(lates):.3f}) | "
                     f"{mean[-1]:.3f} ({min(lasts):.3f}-{max(lasts):.3f}) | {mean[-1] - max(mean):+.3f} | "
                     f"{own_drop:+.3f} | {train_tail:.3f} |")
    return "\n".join(lines) + "\n"


def late_reward(run: dict[str, Any]) -> float:
    """A run's validation reward over the second half of training (its steps past the middle): what a
    collapse lowers, less noisy than the last point alone."""
    steps = sorted(run["validation"], key=int)
    last = int(steps[-1])
    late = [run["validation"][s] for s in steps if int(s) > last / 2] or [run["validation"][steps[-1]]]
    return statistics.fmean(late)


def late_panel(ax: Any, results: dict[str, dict[str, Any]], noise_g: int, colours: dict[str, str]) -> None:
    """The noise hypothesis in one panel: late validation reward against judge noise p at G = ``noise_g``, a line
    per assignment, mean over seeds with min-max bars. If noise drives the collapse, finer lines fall faster."""
    by: dict[str, dict[float, list[float]]] = {}
    for run in results.values():
        if run["group_size"] == noise_g:
            by.setdefault(run["assignment"], {}).setdefault(run["noise"], []).append(late_reward(run))
    for assignment, points in sorted(by.items()):
        ps = sorted(points)
        means = [statistics.fmean(points[p]) for p in ps]
        ax.errorbar(ps, means, yerr=[[m - min(points[p]) for p, m in zip(ps, means)],
                                     [max(points[p]) - m for p, m in zip(ps, means)]],
                    marker="o", markersize=4, capsize=3, color=colours.get(assignment),
                    label=f"{assignment} (n={len(points[ps[0]])})")
    ax.set_title(f"late validation vs judge noise (G {noise_g})", fontsize=10)
    ax.set_xlabel("judge noise p (verdict flip probability)")
    ax.set_ylabel("validation reward, 2nd half of training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot(results: dict[str, dict[str, Any]], path: Path, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = panels(results, quick)
    fig, grid_axes = plt.subplots(2, 2, figsize=(11, 7.6), squeeze=False)
    axes = list(grid_axes.flat)
    colours = {a: f"C{i}" for i, a in enumerate(ASSIGNMENTS)}
    for ax, (title, lines) in zip(axes, chosen):
        noise_panel = title.startswith("judge noise")
        for label, members in sorted(lines.items()):
            steps, mean, low, high = band(members)
            if not steps:
                continue
            style: dict[str, Any] = {"color": colours[label]} if label in colours else {}
            if noise_panel:  # colour: assignment; line: p (solid 0, dashed, dotted)
                p = members[0]["noise"]
                style = {"color": colours.get(members[0]["assignment"]),
                         "linestyle": "-" if p == 0 else "--" if p < max(NOISE) else ":"}
            ax.plot(steps, mean, marker="o", markersize=3, label=f"{label} (n={len(members)})", **style)
            if not noise_panel:  # nine bands in one panel would hide the lines
                ax.fill_between(steps, low, high, alpha=0.15)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("validation reward (held-out)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    late_panel(axes[len(chosen)], results, 2 if quick else NOISE_G, colours)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.figure3", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="smoke test: micro model, 2 steps, reduced grid")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--interval", type=int, default=5, help="steps between validations")
    parser.add_argument("--prompts", type=int, default=4, help="dialogues per GRPO step")
    parser.add_argument("--eval-samples", type=int, default=4, help="sampled episodes per validation dialogue")
    parser.add_argument("--validation", type=int, default=VALIDATION,
                        help="held-out validation dialogues (more: a less noisy curve, a slower validation)")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (one CPU thread each)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.interval, args.prompts, args.eval_samples = "0", 2, 1, 2, 1
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out: Path = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    start = prepare_start(out, args.quick)
    train_ids, validation_ids = split(args.quick, args.validation)
    runs = grid(seeds, args.quick)
    print(f"figure3: {len(runs)} runs, {args.workers} at a time, {args.steps} steps each -> {out}", file=sys.stderr)
    done = 0

    def one(run: Run) -> dict[str, Any]:
        return launch(run, run_config(run, start, out, args, train_ids, validation_ids), out, args.steps)

    statuses = []
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        for status in pool.map(one, runs):
            done += 1
            statuses.append(status)
            print(f"[{done}/{len(runs)}] {status['run']}: {status['status']} ({status['seconds']} s)",
                  file=sys.stderr, flush=True)
    results = curves(out, runs, args.steps)
    # a resumed study adds to what earlier invocations of this folder spent: wall_s is the folder's total
    earlier = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    run_seconds = dict(earlier.get("run_seconds") or {s["run"]: s["seconds"] for s in earlier.get("statuses", [])})
    for status in statuses:  # a run resumed by this invocation adds to what it took before
        run_seconds[status["run"]] = round(run_seconds.get(status["run"], 0.0) + status["seconds"], 1)
    wall = round(earlier.get("wall_s", 0.0) + time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps({"runs": results, "statuses": statuses, "wall_s": wall,
                                                  "run_seconds": run_seconds,
                                                  "args": {k: str(v) for k, v in vars(args).items()},
                                                  "train_dialogues": train_ids,
                                                  "validation_dialogues": validation_ids}, indent=1))
    (out / "table.md").write_text(table(results))
    plot(results, out / "figure3.png", args.quick)
    failed = [s for s in statuses if not s["status"].startswith(("ok", "done"))]
    for status in failed:
        print(f"{status['run']}: {status['status']}", file=sys.stderr)
    print(table(results))
    print(f"wall {wall} s (this folder, all invocations); results in {out}/results.json, table.md, figure3.png",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
