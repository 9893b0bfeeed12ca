"""How concurrent CM2VectorEnv is: N sub-envs whose judge and simulator each take a fixed latency per call.

Every sub-env plays the reference actions of the same dialogue, so every episode has the same chain of sequential
backend calls. The ratio "N episodes at once / one episode alone" is 1.0 for perfect concurrency and N for none.
Backends are in-process and wait with ``asyncio.sleep`` (HTTP latency is the rollout benchmark's subject).

    .venv/bin/python benchmarks/perf/env_vector_concurrency.py [--envs 64] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from cm2_env.data import dialogue_turns, load_dialogues
from cm2_env.judge import Verdict
from cm2_env.simulator import make_simulator
from cm2_env.toolcalls import render_message_hermes
from cm2_env.vector import CM2VectorEnv

DIALOGUE = "tooltalk/Calendar-Reminder-Weather-CompleteReminder-1"


class LatentJudge:
    """Passes every item after ``latency`` seconds: an LLM judge's wait without its server and without the
    RuleJudge's own CPU work (which would serialise across episodes and blur the env's concurrency)."""

    def __init__(self, latency: float):
        self.latency = latency

    async def judge(self, request):
        await asyncio.sleep(self.latency)
        return {item.id: Verdict(item.id, True, "llm") for item in request.items}

    def usage(self):
        return {}


class LatentSimulator:
    """The replay simulator's answers after ``latency`` seconds."""

    def __init__(self, latency: float):
        self.latency, self.replay = latency, make_simulator("replay")

    def start_episode(self, dialogue):
        inner, latency = self.replay.start_episode(dialogue), self.latency

        class Episode:
            async def execute(self, name, arguments, *, turn):
                await asyncio.sleep(latency)
                return await inner.execute(name, arguments, turn=turn)

            def usage(self):
                return inner.usage()

        return Episode()


def actions(dialogue) -> list[str]:
    return [render_message_hermes(action.assistant) for turn in dialogue_turns(dialogue) for action in turn.actions]


def run(n: int, latency: float, dialogue) -> tuple[float, int]:
    envs = CM2VectorEnv(n, dataset=[dialogue], judge=LatentJudge(latency), simulator=LatentSimulator(latency),
                        autoreset_mode="Disabled")
    envs.reset(seed=0)
    start = time.perf_counter()
    steps = 0
    for text in actions(dialogue):
        _, _, terminations, truncations, _ = envs.step([text] * n)
        steps += 1
        if (terminations | truncations).all():
            break
    elapsed = time.perf_counter() - start
    envs.close()
    return elapsed, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per judge request and per tool call")
    args = parser.parse_args()
    dialogue = next(d for d in load_dialogues("tooltalk") if d.id == DIALOGUE)
    single, steps = run(1, args.latency, dialogue)
    many, _ = run(args.envs, args.latency, dialogue)
    print(f"1 episode ({steps} actions):   {single:.3f} s")
    print(f"{args.envs} episodes at once: {many:.3f} s")
    print(f"ratio: {many / single:.2f} (1.0 = perfectly concurrent; target < 1.5)")


if __name__ == "__main__":
    main()
