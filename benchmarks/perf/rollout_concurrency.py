"""Concurrency of the rollout engine (issue 6; issue 17, point 3): N concurrent episodes vs the longest single one.

Policy and judge are a scripted OpenAI-compatible server on 127.0.0.1 with a fixed latency (default 50 ms):
the policy always answers with a final reply, the judge passes every item, so each episode walks all its turns
with a chain of sequential LLM calls (policy, then judge, per turn). We time every dialogue's episode alone (the
slowest one twice more: its median is the "longest single episode"), then 64 and 256 episodes at once through
``agents.rollout.arun_rollouts`` (256 > the 78 bundled dialogues: the list is repeated, which makes groups), and
print ``ratio = time(all concurrently) / time(longest single episode)`` (target <= 1.1). The server runs in its own
process, as an external endpoint would, so its request handling does not compete with the rollout loop for the
GIL -- but on a small machine it competes for the cores: the CPU seconds of both processes and the load average are
printed. Since every call takes the same latency, the episodes advance in lockstep and each round's answers are
handled one after the other by each single-threaded process; the script prints what that "lockstep-burst" model
predicts from the measured CPU per call (and from the server's share alone), and when the target is missed, why.

Run from the repository root:
``.venv/bin/python benchmarks/perf/rollout_concurrency.py [--episodes 64,256] [--json]``; ``--json`` ends the output
with one JSON line: ``ratio`` (at the first episode count), ``ratio_<N>`` for the others, and the timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import statistics
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
    concurrency = max(64, len(dialogues))  # the clients' cap on requests in flight must not be the bottleneck
    agent = EndpointAgent(spec, temperature=0.0, client_options={"max_concurrency": concurrency})
    judge = make_judge(spec, batch_items=batch_items, temperature=0.0, llm_options={"max_concurrency": concurrency})
    try:
        start = time.perf_counter()
        results = await arun_rollouts(dialogues, agent, group_size=1, concurrency=len(dialogues) or 1,
                                      env_kwargs={"judge": judge}, progress=False)
        elapsed = time.perf_counter() - start
    finally:
        await agent.aclose()
        await judge.aclose()
    assert not any(r.failed for r in results), [r.failure for r in results if r.failed]
    CHAINS[:] = [len(r.steps) + int(r.usage.get("judge_requests", 0)) for r in results]
    return elapsed


#: The sequential LLM calls of each episode of the last timed_rollouts (policy calls + judge requests).
CHAINS: list[int] = []


def burst_model(chains: list[int], per_call_s: float) -> float:
    """Seconds the longest chain waits if every round's answers arrive together and are handled one after the
    other at ``per_call_s`` each (it waits, on average, for half of the round's burst): round r has as many calls
    as there are chains with at least r calls."""
    return sum(sum(c >= r for c in chains) * per_call_s / 2 for r in range(1, max(chains) + 1))


def serve(latency: float, port_queue, stop_event) -> None:
    """Child process: run the scripted server until told to stop."""
    with ScriptedServer(respond, latency_s=latency) as server:
        port_queue.put(server.spec)
        stop_event.wait()


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of this process (or of the child ``pid``, from /proc)."""
    if pid is None:
        return time.process_time()
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", default="64,256", help="comma-separated episode counts (the first is `ratio`)")
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--per-item", action="store_true", help="one judge request per item instead of batched")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    args = parser.parse_args()
    counts = [int(n) for n in args.episodes.split(",")]
    bundled = load_dialogues("tooltalk")
    runs = {n: (bundled * (-(-n // len(bundled))))[:n] for n in counts}
    distinct = list({d.id: d for n in counts for d in runs[n]}.values())
    batched = not args.per_item
    context = multiprocessing.get_context("spawn")
    spec_queue, stop = context.Queue(), context.Event()
    child = context.Process(target=serve, args=(args.latency, spec_queue, stop), daemon=True)
    child.start()
    together: dict[int, tuple[float, float, float, float]] = {}
    chains: dict[int, list[int]] = {}
    try:
        spec = spec_queue.get(timeout=60)
        asyncio.run(timed_rollouts(distinct[:2], spec, batched))  # warm-up (imports, connections)
        singles = {d.id: asyncio.run(timed_rollouts([d], spec, batched)) for d in distinct}
        slowest = max(distinct, key=lambda d: singles[d.id])
        longest = statistics.median([singles[slowest.id]] + [asyncio.run(timed_rollouts([slowest], spec, batched))
                                                              for _ in range(2)])
        for n in counts:
            cpu, server_cpu = cpu_seconds(), cpu_seconds(child.pid)
            elapsed = asyncio.run(timed_rollouts(runs[n], spec, batched))
            together[n] = (elapsed, cpu_seconds() - cpu, cpu_seconds(child.pid) - server_cpu, os.getloadavg()[0])
            chains[n] = list(CHAINS)
    finally:
        stop.set()
        child.join(timeout=10)
    print(f"latency: {args.latency * 1000:.0f} ms  judge: {'per item' if args.per_item else 'batched'}  "
          f"cores: {os.cpu_count()}")
    print(f"longest single episode: {longest:.3f} s ({slowest.id}; mean single "
          f"{statistics.fmean(singles.values()):.3f} s over {len(singles)} dialogues)")
    figures: dict[str, float] = {"longest_single_s": round(longest, 4)}
    for i, (n, (elapsed, cpu, server_cpu, load)) in enumerate(together.items()):
        ratio = elapsed / longest
        busy = (cpu + server_cpu) / elapsed  # cores kept busy by the two processes
        print(f"{n} episodes concurrently: {elapsed:.3f} s  ratio {ratio:.2f} (target <= 1.1: "
              f"{'met' if ratio <= 1.1 else 'NOT met'})  CPU: rollout {cpu:.2f} s + server {server_cpu:.2f} s "
              f"= {busy:.2f} of {os.cpu_count()} cores; load average {load:.1f}")
        calls = sum(chains[n])
        per_call = (cpu + server_cpu) / calls  # rollout loop + server, per LLM call
        modelled = (longest + burst_model(chains[n], per_call)) / longest
        server_only = (longest + burst_model(chains[n], server_cpu / calls)) / longest
        print(f"  {calls} LLM calls: {cpu / calls * 1e3:.2f} ms of rollout-loop CPU + {server_cpu / calls * 1e3:.2f} ms "
              f"of server CPU each; lockstep-burst model: ratio {modelled:.2f}")
        if ratio > 1.1:
            print(f"  not met because every call takes the same {args.latency * 1000:.0f} ms, so the episodes advance "
                  f"in lockstep: each round's answers arrive together and each single-threaded process (the "
                  f"rollout's event loop, the server's GIL) handles them one after the other. The longest episode "
                  f"waits for half of each round's burst: {per_call * 1e3:.2f} ms x the calls in flight, summed over "
                  f"its rounds, gives the modelled {modelled:.2f} -- and {server_only:.2f} from the scripted "
                  f"server's share alone, i.e. with a rollout loop that cost nothing; load average {load:.1f} on "
                  f"{os.cpu_count()} cores adds the wait for a core")
        figures[f"modelled_ratio_{n}"] = round(modelled, 3)
        figures[f"modelled_ratio_server_only_{n}"] = round(server_only, 3)
        figures[f"llm_calls_{n}"] = calls
        key = "ratio" if i == 0 else f"ratio_{n}"
        figures[key] = round(ratio, 3)
        figures[f"together_{n}_s"] = round(elapsed, 4)
        figures[f"rollout_cpu_{n}_s"] = round(cpu, 3)
        figures[f"server_cpu_{n}_s"] = round(server_cpu, 3)
        figures[f"load_average_{n}"] = round(load, 2)
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
