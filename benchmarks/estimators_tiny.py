"""Each advantage estimator on the tiny CPU run: reward before -> after, one table (a report, not a test).

Runs ``cm2 train --preset tiny-cpu-quick`` (the learning test's recipe: 4 dialogues, 16 GRPO steps) once per
estimator of :data:`train.estimators.ESTIMATORS`, on the same seed, so the SFT model and the "before" reward are
the same in every row. The preset's recipe is GRPO with ``f_norm: std`` and ``seq-mean-token-mean``; the other
rows change only what the estimator needs: ``f_norm: none`` (only GRPO divides by a group's std), and Dr. GRPO
with its own loss aggregation (``auto``). The learning rate and everything else stay as tuned for GRPO, so read
the rows as "does it learn with the same budget", not as a ranking.

    .venv/bin/python benchmarks/estimators_tiny.py [--seed 0] [--only rloo,grpo] [--out runs/estimators] [--json]

With ``--json`` the last line is one JSON object: per row ``reward_before``, ``reward_after``, ``greedy_before``,
``greedy_after`` and ``train_seconds``. Takes a few minutes per row on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.getcwd())

from train.estimators import ESTIMATORS  # noqa: E402
from train.presets import run_tiny_cpu  # noqa: E402


def rows() -> dict[str, dict[str, str]]:
    """Row label -> overrides of the quick preset."""
    out: dict[str, dict[str, str]] = {"grpo (f_norm std, the preset)": {"estimator": "grpo"},
                                      "grpo (f_norm none, the paper)": {"estimator": "grpo", "f_norm": "none"}}
    for name in ESTIMATORS:
        if name != "grpo":
            out[name] = {"estimator": name, "f_norm": "none",
                         **({"loss_aggregation": "auto"} if name == "dr_grpo" else {})}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated estimator names (default: every row)")
    parser.add_argument("--out", default="", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    wanted = {name for name in args.only.split(",") if name}
    unknown = wanted - set(ESTIMATORS)
    if unknown:
        parser.error(f"unknown estimator(s) {sorted(unknown)}; choose from {', '.join(ESTIMATORS)}")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.out or scratch)
        for k, (label, overrides) in enumerate(rows().items()):
            if wanted and overrides["estimator"] not in wanted:
                continue
            summary = run_tiny_cpu(root / f"row-{k}", seed=args.seed, preset="tiny-cpu-quick", **overrides)
            results[label] = {key: round(summary[key], 4) for key in
                              ("reward_before", "reward_after", "greedy_before", "greedy_after", "train_seconds")}
            print(f"{label}: done", file=sys.stderr, flush=True)
    print(f"tiny-cpu-quick, seed {args.seed}: mean reward of 16 sampled episodes on each of 4 dialogues")
    print(f"{'estimator':32} {'sampled before -> after':>26} {'greedy before -> after':>24} {'train s':>8}")
    for label, r in results.items():
        sampled = f"{r['reward_before']:.3f} -> {r['reward_after']:.3f} ({r['reward_after'] - r['reward_before']:+.3f})"
        greedy = f"{r['greedy_before']:.3f} -> {r['greedy_after']:.3f}"
        print(f"{label:32} {sampled:>26} {greedy:>24} {r['train_seconds']:>8.1f}")
    if args.json:
        print(json.dumps({"seed": args.seed, "rows": results}))


if __name__ == "__main__":
    main()
