"""Concurrency of the rollout engine (issue 6 acceptance): 64 concurrent episodes vs the longest single one.

Policy and judge are a scripted OpenAI-compatible server on 127.0.0.1 with a fixed latency (default 50 ms):
the policy always answers with a final reply, the judge passes every item, so each episode walks all its turns
with a chain of sequential LLM calls (policy, then judge, per turn). We time every dialogue's episode alone,
then all of them at once through ``agents.rollout.run_rollouts``, and print the ratio
``time(all concurrently) / time(longest single episode)`` (target < 1.5). The server runs in its own process,
as an external endpoint would, so its request handling does not compete with the rollout loop for the GIL.

Run from the repository root: ``.venv/bin/python benchmarks/perf/rollout_concurrency.py [--episodes 64]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import sys
import time

sys.path.insert(0, os.getcwd())

from agents import EndpointAgent  # noqa: E402
from agents.rollout import arun_rollouts  # noqa: E402
from cm2_env.data import load_dialogues  # noqa: E402
from cm2_env.judge import make_judge  # noqa: E402
from tests.support.scripted_server import ScriptedServer  # noqa: E402

_ITEM_ID = re.compile(r"^### Item (\S+)$", re.MULTILINE)


def respond(request: dict) -> str:
    """Judge requests (JSON verdict prompts) pass every item; policy requests get a final reply."""
    prompt = request["messages"][-1].get("content") or ""
    if '"answer"' in prompt:
        if '"verdicts"' in prompt:
            ids = list(dict.fromkeys(_ITEM_ID.findall(prompt)))
            return json.dumps({"verdicts": [{"id": i, "answer": True} for i in ids]})
        return json.dumps({"evidence_analysis": "", "focus_analysis": "", "pass_analysis": "",
                           "failure_analysis": "", "answer": True})
    return "Done."


async def timed_rollouts(dialogues, spec: str, batch_items: bool) -> float:
    agent = EndpointAgent(spec, temperature=0.0)
    judge = make_judge(spec, batch_items=batch_items, temperature=0.0)
    start = time.perf_counter()
    results = await arun_rollouts(dialogues, agent, group_size=1, concurrency=len(dialogues) or 1,
                                  env_kwargs={"judge": judge}, progress=False)
    elapsed = time.perf_counter() - start
    assert not any(r.failed for r in results), [r.failure for r in results if r.failed]
    return elapsed


def serve(latency: float, port_queue, stop_event) -> None:
    """Child process: run the scripted server until told to stop."""
    with ScriptedServer(respond, latency_s=latency) as server:
        port_queue.put(server.spec)
        stop_event.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--per-item", action="store_true", help="one judge request per item instead of batched")
    args = parser.parse_args()
    dialogues = load_dialogues("tooltalk")[: args.episodes]
    context = multiprocessing.get_context("spawn")
    spec_queue, stop = context.Queue(), context.Event()
    child = context.Process(target=serve, args=(args.latency, spec_queue, stop), daemon=True)
    child.start()
    try:
        spec = spec_queue.get(timeout=60)
        asyncio.run(timed_rollouts(dialogues[:2], spec, not args.per_item))  # warm-up
        singles = [asyncio.run(timed_rollouts([d], spec, not args.per_item)) for d in dialogues]
        together = asyncio.run(timed_rollouts(dialogues, spec, not args.per_item))
    finally:
        stop.set()
        child.join(timeout=10)
    longest = max(singles)
    print(f"episodes: {len(dialogues)}  latency: {args.latency * 1000:.0f} ms  "
          f"judge: {'per item' if args.per_item else 'batched'}  load average: {os.getloadavg()[0]:.1f}")
    print(f"longest single episode: {longest:.3f} s  (mean single {sum(singles) / len(singles):.3f} s)")
    print(f"all {len(dialogues)} concurrently: {together:.3f} s")
    print(f"ratio concurrent / longest single: {together / longest:.2f}  (target < 1.5)")


if __name__ == "__main__":
    main()
