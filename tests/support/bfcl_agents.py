"""In-process agents (``agents.base.Agent``) used as BFCL policies by tests/test_bench_bfcl.py.

They run inside the BFCL worker subprocess, imported by ``module:attribute``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from agents.base import AgentStep

# A call that changes backend state, per BFCL tool name (GorillaFileSystem, TwitterAPI, TicketAPI, ...).
JUNK_CALLS: dict[str, dict[str, Any]] = {
    "mkdir": {"dir_name": "cm2_junk"},
    "touch": {"file_name": "cm2_junk.txt"},
    "post_tweet": {"content": "cm2 junk"},
    "create_ticket": {"title": "cm2 junk"},
}


def _text(content: str) -> AgentStep:
    return AgentStep(text=content, message={"role": "assistant", "content": content})


class StateMutatingAgent:
    """A wrong policy: at the start of every turn it makes junk state changes, then stops."""

    async def act(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> AgentStep:
        if messages and messages[-1].get("role") == "tool":
            return _text("Done.")
        names = {tool["function"]["name"] for tool in tools}
        calls = [
            {"id": f"junk_{index}", "type": "function",
             "function": {"name": name, "arguments": json.dumps(arguments)}}
            for index, (name, arguments) in enumerate(JUNK_CALLS.items()) if name in names
        ]
        if not calls:
            return _text("Nothing to do.")
        return AgentStep(text="", message={"role": "assistant", "content": None, "tool_calls": calls})


class FlakyAgent:
    """Fails every request while $CM2_TEST_BFCL_FAIL is set (an endpoint outage); otherwise answers with text."""

    async def act(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> AgentStep:
        if os.environ.get("CM2_TEST_BFCL_FAIL"):
            raise RuntimeError("scripted outage")
        return _text("No tool needed.")


def make_state_mutating_agent() -> StateMutatingAgent:
    """A factory: ``module:attribute`` may name a zero-argument callable that returns the agent."""
    return StateMutatingAgent()
