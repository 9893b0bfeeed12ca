"""Time the full BFCL v4 multi-turn run (800 entries) of the ground-truth-replaying oracle, then a resume.

    .venv/bin/python benchmarks/perf/bfcl_oracle.py [--mode fc|prompting] [--concurrency 8]

Prints the wall time of a fresh run (worker start, BFCL's loop over 800 entries, BFCL's checker) and of a
rerun in the same directory (everything reused, only re-scored), plus the scores (all must be 100).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.bfcl import MODES, MULTI_TURN_CATEGORIES, BfclOptions, run_bfcl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, default="fc")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        options = BfclOptions(policy="oracle", out=Path(tmp), categories=list(MULTI_TURN_CATEGORIES),
                              mode=args.mode, concurrency=args.concurrency)
        for label in ("fresh", "resume"):
            started = time.perf_counter()
            report = run_bfcl(options)
            wall = time.perf_counter() - started
            entries = sum(row["total"] for row in report.categories.values())
            scores = {name: row["accuracy"] for name, row in report.categories.items()}
            print(f"{label}: {entries} entries in {wall:.2f} s (mode {args.mode}, concurrency {args.concurrency}); "
                  f"multi_turn_overall {report.to_json()['multi_turn_overall']:.2f}; {scores}")


if __name__ == "__main__":
    main()
