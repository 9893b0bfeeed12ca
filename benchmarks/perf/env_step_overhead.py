"""Per-step overhead of CM2ToolUse-v0 itself, with zero-latency in-process backends.

Target (issue 6): median environment overhead per step <= 0.5 ms. The agent plays the reference actions of all
bundled ToolTalk dialogues (texts rendered up front, so the agent costs nothing). Three measurements:

- ``null backends, sync``: ``env.step`` with a simulator that answers every call with a constant and a judge that
  answers every item "not passed" without looking at it -- what remains is the environment's own work (parsing,
  transcript, observation, verdict bookkeeping, reward, info, and the private event loop of the sync API);
- ``null backends, async``: the same through ``await env.astep`` inside one running loop (the rollout engine's
  path, no per-step ``run_until_complete``);
- ``replay + rule, sync``: the default backends (replay simulator with schema validation, RuleJudge) for
  reference: this includes their own work.

    .venv/bin/python benchmarks/perf/env_step_overhead.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from cm2_env.data import dialogue_turns, load_dialogues
from cm2_env.env import CM2ToolUseEnv
from cm2_env.judge.base import Verdict
from cm2_env.simulator.base import ToolResult
from cm2_env.toolcalls import render_message_hermes


class ConstantSimulator:
    """Answers every call with the same JSON at once (no replay lookup, no schema check)."""

    class Episode:
        async def execute(self, name, arguments, *, turn):
            return ToolResult('{"response": "ok"}', "replay")

        def usage(self):
            return {}

    def start_episode(self, dialogue):
        return self.Episode()


class NullJudge:
    """Answers every requested item "not passed" without reading the transcript."""

    async def judge(self, request):
        return {item.id: Verdict(item.id, False, "rule") for item in request.items}

    def usage(self):
        return {}


def reference_actions(dialogue) -> list[str]:
    """Every reference action of the dialogue as Hermes text, in order (turns concatenated)."""
    return [render_message_hermes(action.assistant) for turn in dialogue_turns(dialogue) for action in turn.actions]


def time_sync(env: CM2ToolUseEnv, plays: list[tuple[str, list[str]]]) -> list[float]:
    times = []
    for dialogue_id, actions in plays:
        env.reset(options={"dialogue_id": dialogue_id})
        for text in actions:
            start = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(text)
            times.append(time.perf_counter() - start)
            if terminated or truncated:
                break
    return times


async def time_async(env: CM2ToolUseEnv, plays: list[tuple[str, list[str]]]) -> list[float]:
    times = []
    for dialogue_id, actions in plays:
        await env.areset(options={"dialogue_id": dialogue_id})
        for text in actions:
            start = time.perf_counter()
            _, _, terminated, truncated, _ = await env.astep(text)
            times.append(time.perf_counter() - start)
            if terminated or truncated:
                break
    return times


def summary(name: str, times: list[float]) -> str:
    ms = sorted(t * 1e3 for t in times)
    p90 = ms[int(0.9 * (len(ms) - 1))]
    return f"{name:<26} steps={len(ms):>5}  median={statistics.median(ms):.3f} ms  p90={p90:.3f} ms  mean={statistics.fmean(ms):.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over the 78 dialogues per measurement")
    args = parser.parse_args()
    dialogues = load_dialogues("tooltalk")
    plays = [(d.id, reference_actions(d)) for d in dialogues] * args.rounds

    # strict=False: the null judge never passes an item, and every turn should still be played.
    null_env = CM2ToolUseEnv(dialogues, ConstantSimulator(), NullJudge(), strict=False)
    time_sync(null_env, plays[: len(dialogues)])  # warm-up (plan caches, imports)
    null_sync = time_sync(null_env, plays)
    null_async = asyncio.run(time_async(CM2ToolUseEnv(dialogues, ConstantSimulator(), NullJudge(), strict=False), plays))
    default_env = CM2ToolUseEnv(dialogues, strict=False)
    default_sync = time_sync(default_env, plays)

    print(summary("null backends, sync", null_sync))
    print(summary("null backends, async", null_async))
    print(summary("replay + rule, sync", default_sync))
    median = statistics.median(null_sync) * 1e3
    print(f"environment overhead per step (median, sync API): {median:.3f} ms  (target <= 0.5 ms: "
          f"{'met' if median <= 0.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
