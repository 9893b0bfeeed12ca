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

Then the growth with history (issue 17, point 4; target: flat). The bundled dialogues have 1-11 turns, so a
synthetic episode of 31 identical turns is played (:func:`long_dialogue`: one bundled turn with a tool call, a
final reply and its checklist items, repeated) with the null judge and a constant simulator whose tool result is
``--tool-response-chars`` long (default 1000: the history reaches ~45 KB at turn 30), through ``astep``.
``step_ms[N]`` is the environment's time per step in turn N, i.e. with N - 1 turns of history before it (mean of
the turn's two steps, median over ``--growth-rounds`` episodes; the turns are measured within the same episodes, so
under the same load). Every measured turn does the same work, so whatever grows from turn 1 to turn 30 is cost
that depends on the history. ``--json`` ends the output with one JSON line of the figures.

    .venv/bin/python benchmarks/perf/env_step_overhead.py [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from cm2_env.data import Dialogue, dialogue_turns, load_dialogues
from cm2_env.env import CM2ToolUseEnv
from cm2_env.judge.base import Verdict
from cm2_env.simulator.base import ToolResult
from cm2_env.toolcalls import render_message_hermes


class ConstantSimulator:
    """Answers every call with the same JSON at once (no replay lookup, no schema check); ``chars`` pads the
    answer to about that length (a realistic tool result is a few hundred to a few thousand characters)."""

    def __init__(self, chars: int = 0):
        self.content = json.dumps({"response": "ok" if chars <= 20 else "x" * (chars - 16)})

    class Episode:
        def __init__(self, content: str):
            self.content = content

        async def execute(self, name, arguments, *, turn):
            return ToolResult(self.content, "replay")

        def usage(self):
            return {}

    def start_episode(self, dialogue):
        return self.Episode(self.content)


class NullJudge:
    """Answers every requested item "not passed" without reading the transcript."""

    async def judge(self, request):
        return {item.id: Verdict(item.id, False, "rule") for item in request.items}

    def usage(self):
        return {}


def reference_actions(dialogue) -> list[str]:
    """Every reference action of the dialogue as Hermes text, in order (turns concatenated)."""
    return [render_message_hermes(action.assistant) for turn in dialogue_turns(dialogue) for action in turn.actions]


def long_dialogue(dialogues, n_turns: int) -> Dialogue:
    """A synthetic dialogue of ``n_turns`` identical turns: the first bundled turn that has one tool call, a
    final reply and several checklist items, repeated behind its dialogue's system prompt (with its items and
    tools). Every turn then costs the environment the same work, so what changes with ``n_turns`` is only the
    history that the last turn's steps carry."""
    for dialogue in dialogues:
        items = dialogue.checklist()
        for t, turn in enumerate(dialogue_turns(dialogue)):
            if len(turn.actions) == 2 and not turn.actions[0].is_final_reply and turn.actions[1].is_final_reply \
                    and t < len(items) and len(items[t]) >= 3:
                system = list(dialogue.messages[: dialogue_turns(dialogue)[0].start])
                return Dialogue(id=f"synthetic-{n_turns}-turns", tools=dialogue.tools,
                                messages=system + list(turn.messages) * n_turns,
                                checklists=[[list(items[t]) for _ in range(n_turns)]])
    raise ValueError("no bundled turn with one tool call, a final reply and three checklist items")


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


async def time_turns(env: CM2ToolUseEnv, dialogue_id: str, actions: list[str], turns: tuple[int, ...],
                     rounds: int) -> dict[int, tuple[float, int]]:
    """Per turn number N in ``turns`` (1-based): the environment's time per step of the N-th turn, i.e. with N - 1
    turns of history before it (mean over the turn's steps, median over ``rounds`` episodes), and the length of
    the observation at the end of that turn. The episode has more turns than max(turns), so every measured turn
    does the same work: a tool call, then a final reply that opens the next turn."""
    per_turn: dict[int, list[float]] = {n: [] for n in turns}
    lengths: dict[int, int] = {}
    for _ in range(rounds):
        info = (await env.areset(options={"dialogue_id": dialogue_id}))[1]
        spent: dict[int, list[float]] = {}
        for text in actions:
            turn = info["turn"] + 1
            start = time.perf_counter()
            obs, _, terminated, truncated, info = await env.astep(text)
            spent.setdefault(turn, []).append(time.perf_counter() - start)
            if turn in per_turn:
                lengths[turn] = len(obs)
            if terminated or truncated:
                break
        assert terminated and not truncated, "the synthetic episode must play all its turns"
        for n in turns:
            per_turn[n].append(statistics.fmean(spent[n]) * 1e3)
    return {n: (statistics.median(per_turn[n]), lengths[n]) for n in turns}


def growth(dialogues, turns: tuple[int, ...], chars: int, rounds: int) -> dict[int, tuple[float, int]]:
    """Per N in ``turns``: (ms per step of the N-th turn, observation length after it), one synthetic episode of
    max(turns) + 1 turns played ``rounds`` times (so the turns are measured interleaved, under the same load)."""
    dialogue = long_dialogue(dialogues, max(turns) + 1)
    actions = reference_actions(dialogue)
    env = CM2ToolUseEnv([dialogue], ConstantSimulator(chars), NullJudge(), strict=False, max_actions=10 ** 6,
                        max_actions_per_turn=10 ** 6, max_turns=10 ** 6)
    asyncio.run(time_turns(env, dialogue.id, actions, turns, 3))  # warm-up
    return asyncio.run(time_turns(env, dialogue.id, actions, turns, rounds))


def summary(name: str, times: list[float]) -> str:
    ms = sorted(t * 1e3 for t in times)
    p90 = ms[int(0.9 * (len(ms) - 1))]
    return f"{name:<26} steps={len(ms):>5}  median={statistics.median(ms):.3f} ms  p90={p90:.3f} ms  mean={statistics.fmean(ms):.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over the 78 dialogues per measurement")
    parser.add_argument("--turns", default="1,10,30", help="episode lengths (turns) of the growth measurement")
    parser.add_argument("--tool-response-chars", type=int, default=1000,
                        help="length of the constant tool result in the growth measurement")
    parser.add_argument("--growth-rounds", type=int, default=200, help="synthetic episodes played for the growth")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
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
    turns = tuple(int(n) for n in args.turns.split(","))
    grown = growth(dialogues, turns, args.tool_response_chars, args.growth_rounds)

    print(summary("null backends, sync", null_sync))
    print(summary("null backends, async", null_async))
    print(summary("replay + rule, sync", default_sync))
    median = statistics.median(null_sync) * 1e3
    print(f"environment overhead per step (median, sync API): {median:.3f} ms  (target <= 0.5 ms: "
          f"{'met' if median <= 0.5 else 'NOT met'})")
    print(f"growth with history (null backends, async, tool results of {args.tool_response_chars} chars):")
    for n, (ms, length) in grown.items():
        print(f"  turn {n:>3}: {ms:.3f} ms per step  (observation after it: {length:,} chars)")
    first, last = grown[turns[0]][0], grown[turns[-1]][0]
    ratio = last / first
    # flat = within 15% (a step's own work does not depend on the history; the one copy of the observation text
    # that every step hands out does, at memory speed)
    print(f"per-step cost at turn {turns[-1]} / at turn {turns[0]}: {ratio:.2f}  (target: flat, <= 1.15: "
          f"{'met' if ratio <= 1.15 else 'NOT met'})")
    if args.json:
        print(json.dumps({"step_ms": {str(n): round(v[0], 4) for n, v in grown.items()},
                          "growth_ratio": round(ratio, 3), "median_step_ms_sync": round(median, 4),
                          "median_step_ms_async": round(statistics.median(null_async) * 1e3, 4),
                          "tool_response_chars": args.tool_response_chars}))


if __name__ == "__main__":
    main()
