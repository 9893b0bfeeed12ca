"""Throughput of ``cm2 data annotate`` (the runner, prompt building, parsing and validation) against a local
scripted annotator that answers every bundled ToolTalk dialogue with its gold checklist after a fixed latency.

Prints records/s at several record concurrencies, and the local cost per record at zero latency (prompt
rendering + JSON parsing + validation + writing, plus the loopback HTTP round trip). The server runs in a child
process so that its threads do not compete with the runner for the GIL.

Run: .venv/bin/python -m benchmarks.perf.annotate_concurrency [--latency 0.1] [--concurrency 1,4,16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import tempfile
import time
from pathlib import Path


def _serve(latency_s: float, port_queue: "multiprocessing.Queue[int]",
           stop: "multiprocessing.Event") -> None:  # type: ignore[name-defined]
    from cm2_env.data import load_dialogues
    from tests.support.scripted_server import ScriptedServer

    answers = {}
    for dialogue in load_dialogues("tooltalk"):
        variant = dialogue.to_record()["checklists"][0]
        answers[dialogue.id] = json.dumps({"turns": [{"turn": t, "items": items} for t, items in enumerate(variant)]})
    firsts = {d.id: next(m.text for m in d.messages if m.role == "user") for d in load_dialogues("tooltalk")}

    def responder(request: dict) -> str:
        prompt = request["messages"][1]["content"]
        return next(answers[i] for i, user in firsts.items() if user in prompt)

    with ScriptedServer(responder, latency_s=latency_s) as server:
        port_queue.put(server.port)
        stop.wait()


def _run_once(spec: str, source: Path, concurrency: int) -> tuple[float, dict]:
    from cm2_env.annotate.checklists import annotate_dialogue
    from cm2_env.annotate.runner import Outcome, process_file
    from cm2_env.llm import make_client

    client = make_client(spec, role="annotator", max_concurrency=256)

    async def process(raw: dict, dialogue) -> Outcome:
        result = await annotate_dialogue(client, dialogue)
        return Outcome("written", result.record) if result.ok else Outcome("rejected", reasons=result.problems)

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        report = asyncio.run(process_file(source, Path(folder) / "out.jsonl", process, concurrency=concurrency))
        return time.perf_counter() - started, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.1, help="server latency per request, seconds")
    parser.add_argument("--concurrency", default="1,4,16", help="record concurrencies to time")
    args = parser.parse_args()
    from cm2_env.data import load_dialogues

    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "in.jsonl"
        records = [{k: v for k, v in d.to_record().items() if k != "checklists"} for d in load_dialogues("tooltalk")]
        source.write_text("".join(json.dumps(r) + "\n" for r in records))
        for latency in (0.0, args.latency):
            port_queue, stop = context.Queue(), context.Event()
            child = context.Process(target=_serve, args=(latency, port_queue, stop), daemon=True)
            child.start()
            spec = f"openai:http://127.0.0.1:{port_queue.get(timeout=60)}/v1#scripted"
            try:
                levels = [1] if latency == 0.0 else [int(c) for c in args.concurrency.split(",")]
                for concurrency in levels:
                    elapsed, report = _run_once(spec, source, concurrency)
                    assert report["written"] == len(records), report
                    print(f"latency {latency * 1000:5.0f} ms  concurrency {concurrency:3d}: {len(records)} dialogues "
                          f"in {elapsed:6.2f} s = {len(records) / elapsed:7.1f} dialogues/s "
                          f"({1000 * elapsed / len(records):6.1f} ms per dialogue)")
            finally:
                stop.set()
                child.join(timeout=10)


if __name__ == "__main__":
    main()
