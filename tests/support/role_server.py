"""One scripted OpenAI-compatible server that plays policy, tool simulator and judge at once, deterministically,
in a child process that can inject faults and die mid-run (a test double of external LLM servers).

- policy: at a turn's start, one native call to the first tool of the request that needs no argument (the
  replay simulator or the LLM simulator answers it); after a tool answer, the reply "Done.";
- simulator (the system prompt of cm2's tool simulator): ``{"analysis", "execution_result": {"status": "ok"}}``;
- judge (cm2's judge system prompt): every item passes exactly when the sum of the character codes of its id and
  of the transcript is even -- a deterministic function of the request, so retries give the same verdicts.

:func:`start_role_server` starts it in a ``spawn`` child and returns ``(spec, process, stop_event)``.
``fault_rate``: that share of the distinct requests (chosen by a hash of the request body, not by chance) gets a
fault on its first arrival -- HTTP 500, HTTP 429, a garbage body, an empty completion, or a 30 s stall -- and the
real answer when it is sent again, so a client that retries always gets through and the outcome never depends
on timing. ``die_after`` makes the process exit abruptly (``os._exit``) when that many chat requests have
arrived, dropping its connections.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
from typing import Any

from tests.support.scripted_server import Fault, ScriptedServer


def respond(body: dict[str, Any]) -> Any:
    messages = body["messages"]
    system = messages[0].get("content") or ""
    if "precise tool executor" in system:
        return json.dumps({"analysis": "scripted", "execution_result": {"status": "ok"}})
    if "careful judge" in system:
        prompt = messages[-1]["content"]
        ids = re.findall(r"^### Item (\S+)", prompt, re.MULTILINE)
        parity = sum(map(ord, prompt))
        verdicts = [{"id": i, "evidence_analysis": "", "focus_analysis": "", "pass_analysis": "",
                     "failure_analysis": "", "answer": (parity + sum(map(ord, i))) % 2 == 0} for i in ids]
        return json.dumps(verdicts[0] if len(verdicts) == 1 else {"verdicts": verdicts})
    if messages[-1].get("role") == "tool":
        return "Done."
    free = [t["function"]["name"] for t in body.get("tools") or []
            if not t["function"].get("parameters", {}).get("required")]
    if not free:
        return "Could you tell me more?"
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": free[0], "arguments": "{}"}}]}


FAULTS = (Fault.http(500), Fault.http(429, retry_after=0), Fault.garbage(), Fault.empty(), Fault.stall(30.0))


def _serve(spec_queue: Any, stop_event: Any, fault_rate: float, die_after: int | None) -> None:
    count = {"n": 0}
    seen: set[str] = set()

    def responder(body: dict[str, Any]) -> Any:
        count["n"] += 1
        if die_after is not None and count["n"] >= die_after:
            os._exit(1)  # killed mid-run: connections drop, nothing answers any more
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if int(key[:8], 16) % 1000 < fault_rate * 1000 and key not in seen:
            seen.add(key)
            return FAULTS[int(key[8:12], 16) % len(FAULTS)]
        return respond(body)

    with ScriptedServer(responder) as server:
        spec_queue.put(server.spec)
        stop_event.wait()


def start_role_server(fault_rate: float = 0.0, die_after: int | None = None) -> tuple[str, Any, Any]:
    """``(spec, process, stop_event)`` of a role server in a child process (see the module docstring)."""
    context = multiprocessing.get_context("spawn")
    spec_queue, stop = context.Queue(), context.Event()
    process = context.Process(target=_serve, args=(spec_queue, stop, fault_rate, die_after), daemon=True)
    process.start()
    return spec_queue.get(timeout=120), process, stop
