"""Time of the checklist reward engine: trajectory/turn/step advantages of one group of reward records.

Target: a group of 48 rollouts x 10 turns x 8 items scored in < 5 ms (``score_group`` on the records the
environment writes, the trainer's path). Also times ``replay_histories`` (bare verdict histories -> records, the
``cm2 reward compute`` path) and one ``TurnRewardState.step`` call (the environment calls it once per action).

    .venv/bin/python benchmarks/perf/reward_speed.py [--repeats 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from cm2_env.reward import TurnRewardState, replay_histories, score_group


def make_group(rng: random.Random, n_rollouts=48, n_turns=10, n_items=8, max_steps=6):
    """Random checklists (every third item depends on the one before) and random sticky verdict histories."""
    turns = [
        [{"id": f"C{k}", "weight": 1 / n_items, "dependence": [f"C{k - 1}"] if k % 3 == 2 else []} for k in range(n_items)]
        for _ in range(n_turns)
    ]
    rollouts = []
    for _ in range(n_rollouts):
        reached = rng.randint(1, n_turns) if rng.random() < 0.3 else n_turns  # some episodes end early
        history = []
        for _ in range(reached):
            steps = rng.randint(1, max_steps)
            first = {f"C{k}": (rng.randint(1, steps) if rng.random() < 0.7 else None) for k in range(n_items)}
            history.append({"steps": steps, "first_satisfied": first})
        rollouts.append({"failed": rng.random() < 0.05, "turns": history})
    return turns, rollouts


def timings_ms(fn, repeats: int) -> tuple[float, float]:
    """(median, minimum) wall time of ``fn`` in ms; the minimum is the best guide on a shared, loaded machine."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    turns, rollouts = make_group(random.Random(args.seed))
    n_actions = sum(t["steps"] for r in rollouts for t in r["turns"])
    print(f"group: {len(rollouts)} rollouts x {len(turns)} turns x {len(turns[0])} items, {n_actions} actions")
    print(f"load average (1 min) {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    records = replay_histories(turns, rollouts)
    for f_norm in ("none", "std"):
        median, best = timings_ms(lambda: score_group(records, f_norm=f_norm), args.repeats)
        print(
            f"score_group (trajectory/turn/step advantages of the records), f_norm={f_norm}: "
            f"median {median:.3f} ms, min {best:.3f} ms (target < 5 ms)"
        )
    median, best = timings_ms(lambda: replay_histories(turns, rollouts), args.repeats)
    print(f"replay_histories (histories -> records through TurnRewardState): median {median:.3f} ms, min {best:.3f} ms")

    verdicts = [[f"C{k}" for k in range(a)] for a in range(1, 9)]

    def one_turn():
        state = TurnRewardState(turns[0])
        for satisfied in verdicts:
            state.step(satisfied)

    per_turn_us = timings_ms(one_turn, args.repeats * 10)[0] * 1e3
    construct_us = timings_ms(lambda: TurnRewardState(turns[0]), args.repeats * 10)[0] * 1e3
    step_us = (per_turn_us - construct_us) / len(verdicts)
    print(f"TurnRewardState (median): construct {construct_us:.1f} us; step {step_us:.2f} us per action")


if __name__ == "__main__":
    main()
