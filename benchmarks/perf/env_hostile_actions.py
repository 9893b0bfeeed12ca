"""Step time of CM2ToolUse-v0 (default backends: replay simulator, rule judge) under hostile actions.

Two measurements, in one run:

1. p50/p99 of ``env.step`` over N random actions of the kinds the fuzz test uses: free text, unicode garbage
   with lone surrogates, tool-call JSON (valid, malformed, unknown tools), several calls in one action, unclosed
   ``<think>``, and one 32 KB action in every hundred (the default action limit). Target: p99 under 50 ms.
2. The time of a 1 MB action over a 1 KB action of the same kind (an env allowing 2 MB actions): with linear
   text routines the ratio stays near the size ratio (1000) or below, never its square.

    .venv/bin/python -m benchmarks.perf.env_hostile_actions [--steps 3000] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import time

import gymnasium as gym

import cm2_env  # noqa: F401  (registers CM2ToolUse-v0)

TOOLS = ["QueryCalendar", "CreateEvent", "SendEmail", "GetReminders", "NoSuchTool"]


def random_text(rng: random.Random, size: int) -> str:
    alphabet = string.printable + "äöüß€漢字😀" + "\ud800\udfff"
    return "".join(rng.choice(alphabet) for _ in range(size))


def random_action(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if rng.random() < 0.01:
        return "x" * 32_768
    if kind == 0:
        return random_text(rng, rng.randrange(300))
    if kind == 1:
        return f"<think>{random_text(rng, 50)}"
    calls = []
    for _ in range(1 if kind < 4 else rng.randrange(2, 4)):
        arguments = {random_text(rng, 5): random_text(rng, rng.randrange(40)) for _ in range(rng.randrange(4))}
        body = json.dumps({"name": rng.choice(TOOLS), "arguments": arguments})
        if kind == 3:
            body = body[: rng.randrange(len(body))]  # malformed
        calls.append(f"<tool_call>\n{body}\n</tool_call>")
    return "\n".join(calls)


def step_times(steps: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    env = gym.make("CM2ToolUse-v0")
    env.reset(seed=seed)
    times = []
    for _ in range(steps):
        action = random_action(rng)
        started = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        times.append(time.perf_counter() - started)
        if terminated or truncated:
            env.reset()
    env.close()
    return times


def big_over_small(repeats: int = 3) -> dict[str, float]:
    env = gym.make("CM2ToolUse-v0", max_action_length=2_000_000)
    kinds = {
        "plain text": lambda n: "z" * n,
        "facts": lambda n: ("At 10:30 am on 2023-09-12 with bob@example.com. " * (n // 48 + 1))[:n],
        "tool call": lambda n: '<tool_call>\n{"name": "SendEmail", "arguments": {"body": "'
                               + ("lorem 12:30 ipsum-9x " * (n // 21 + 1))[:n] + '"}}\n</tool_call>',
    }
    ratios = {}
    for name, make in kinds.items():
        timed = {}
        for size in (1_000, 1_000_000):
            best = float("inf")
            for _ in range(repeats):
                env.reset(seed=1)
                action = make(size)
                started = time.perf_counter()
                env.step(action)
                best = min(best, time.perf_counter() - started)
            timed[size] = best
        ratios[name] = timed[1_000_000] / timed[1_000]
    env.close()
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    times = sorted(step_times(args.steps, args.seed))
    p50 = statistics.median(times) * 1000
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))] * 1000
    ratios = big_over_small()
    print(f"{args.steps} hostile actions, default backends: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
          f"max {times[-1] * 1000:.1f} ms (target p99 < 50 ms)")
    for name, ratio in ratios.items():
        print(f"1 MB over 1 KB action ({name}): {ratio:.0f}x (linear: about 1000x or less)")
    if args.json:
        print(json.dumps({"steps": args.steps, "p50_ms": p50, "p99_ms": p99, "big_over_small": ratios}))


if __name__ == "__main__":
    main()
