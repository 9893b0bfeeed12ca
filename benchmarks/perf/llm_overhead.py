"""Client overhead per chat call against a zero-latency local server (issue 4 target: < 1 ms).

The scripted OpenAI-compatible server runs in a child process (so its threads do not compete with the client for
the GIL) and answers at once. Rounds interleave four ways of making the same sequential request, so drift on a
shared machine hits all of them alike; the median per-call time of each is printed, and our overhead is the
difference between ``ChatClient.chat`` and the raw SDK call it wraps:

    raw_http      httpx(2) AsyncClient POST + json.loads      (the floor: HTTP round trip on loopback)
    sdk_parsed    AsyncOpenAI chat.completions.create          (what a caller would write without us)
    sdk_raw       AsyncOpenAI .post('/chat/completions', raw httpx response) + json.loads  (what ChatClient sends through)
    chat_client   cm2_env.llm ChatClient.chat                  (routing, limits, retries loop, parsing, usage)

Run: .venv/bin/python -m benchmarks.perf.llm_overhead [--calls 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the weather in Paris today? Answer in one short sentence."}]


def _serve(port_queue: "multiprocessing.Queue[int]", stop: "multiprocessing.Event") -> None:  # type: ignore[name-defined]
    from tests.support.scripted_server import ScriptedServer

    with ScriptedServer(lambda request: "It is sunny in Paris today.") as server:
        port_queue.put(server.port)
        stop.wait()


async def _time_calls(call, calls: int) -> float:
    """Median seconds per call over ``calls`` sequential awaits of ``call()``."""
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def _run(url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    from openai import AsyncOpenAI

    from cm2_env.llm import make_client
    from cm2_env.llm.client import _httpx_module

    httpx = _httpx_module()
    http = httpx.AsyncClient(base_url=url, timeout=30)
    sdk = AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0)
    client = make_client(f"openai:{url}#scripted", role="policy")

    async def raw_http():
        response = await http.post("/chat/completions", json={"model": "scripted", "messages": MESSAGES})
        return json.loads(response.content)

    async def sdk_parsed():
        return await sdk.chat.completions.create(model="scripted", messages=MESSAGES)

    async def sdk_raw():
        raw = await sdk.post("/chat/completions", body={"model": "scripted", "messages": MESSAGES},
                             cast_to=httpx.Response)
        return json.loads(raw.content)

    async def chat_client():
        return await client.chat(MESSAGES)

    ways = {"raw_http": raw_http, "sdk_parsed": sdk_parsed, "sdk_raw": sdk_raw, "chat_client": chat_client}
    for call in ways.values():  # warm up connections, imports, caches
        await _time_calls(call, 50)
    results: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, call in ways.items():
            results[name].append(await _time_calls(call, calls))
    await http.aclose()
    await sdk.close()
    await client.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="sequential calls per way per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    port_queue: multiprocessing.Queue = multiprocessing.Queue()
    stop = multiprocessing.Event()
    server = multiprocessing.Process(target=_serve, args=(port_queue, stop), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{port_queue.get(timeout=30)}/v1"
        results = asyncio.run(_run(url, args.calls, args.rounds))
    finally:
        stop.set()
        server.join(timeout=5)
    medians = {name: statistics.median(values) * 1e3 for name, values in results.items()}
    print(f"median ms per sequential call ({args.rounds} rounds x {args.calls} calls, zero-latency local server)")
    for name, value in medians.items():
        print(f"  {name:12s} {value:7.3f} ms")
    print(f"ChatClient overhead vs the SDK call it wraps (sdk_raw):  {medians['chat_client'] - medians['sdk_raw']:+.3f} ms")
    print(f"ChatClient overhead vs plain SDK usage (sdk_parsed):      {medians['chat_client'] - medians['sdk_parsed']:+.3f} ms")
    print(f"ChatClient + SDK overhead vs raw HTTP (raw_http):         {medians['chat_client'] - medians['raw_http']:+.3f} ms")


if __name__ == "__main__":
    main()
