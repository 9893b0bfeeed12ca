"""Time the gold-replaying oracle on τ²-bench (all base-split tasks of airline, retail and telecom), then a resume.

    .venv/bin/python benchmarks/perf/tau2_oracle.py [--limit N] [--concurrency 4] [--trials 1]

Every simulation goes through τ²'s own orchestrator and evaluators with the offline scripted user, so this
measures the adapter plus τ²'s own cost per simulation (environment construction, the orchestrator loop and the
evaluators' replays of the trajectory). Prints the wall time of a fresh run and of a rerun in the same directory
(everything recorded, nothing re-run), the simulations per second, and pass^1 per domain (all must be 100).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.tau2 import Tau2Options, run_tau2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--trials", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        options = Tau2Options(policy="oracle", user="scripted", out=Path(tmp), limit=args.limit,
                              trials=args.trials, concurrency=args.concurrency)
        for label in ("fresh", "resume"):
            started = time.perf_counter()
            report = run_tau2(options)
            wall = time.perf_counter() - started
            simulations = sum(row["simulations"] for row in report.domains.values())
            scores = {domain: row["pass_k"].get("1") for domain, row in report.domains.items()}
            print(f"{label}: {simulations} simulations in {wall:.1f} s ({simulations / wall:.2f}/s; concurrency "
                  f"{args.concurrency}, trials {args.trials}); pass^1 {scores}; overall "
                  f"{report.to_json()['overall_pass1']}")


if __name__ == "__main__":
    main()
