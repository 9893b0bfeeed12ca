"""A scripted policy for ToolSandbox tests: the right calls and answer for three scenarios that need no RapidAPI,
keyed by the scenario's first user message (facts read off ToolSandbox's scenario definitions). Anything else
gets a reply without calls. Served by ``cm2 serve`` in the tests, as any cm2 agent would be."""

from __future__ import annotations

from typing import Any, Mapping

from agents.base import AgentStep
from cm2_env.toolcalls import parse, render_hermes, to_assistant_message

#: first user message -> steps; a step is a list of (tool, arguments) or the final answer.
SCRIPTS: dict[str, list[Any]] = {
    "Turn off wifi": [[("set_wifi_status", {"on": False})], "Wifi is turned off"],
    "Is my wifi on?": [[("get_wifi_status", {})], "Wifi is on"],
    "Send a message to +12453344098 saying: How's the new album coming along": [
        [("send_message_with_phone_number",
          {"phone_number": "+12453344098", "content": "How's the new album coming along"})],
        "Your message to +12453344098 has been sent saying: How's the new album coming along",
    ],
}
SCENARIOS = ("wifi_off", "get_wifi", "send_message_with_phone_number_and_content")


class ToolSandboxScript:
    async def act(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                  context: Mapping[str, Any] | None = None) -> AgentStep:
        first = next((m.get("content") or "" for m in messages if m["role"] == "user"), "")
        script = SCRIPTS.get(first.strip(), [])
        step = int((context or {}).get("action", 0))
        entry = script[step] if step < len(script) else "I am sorry, I cannot help with that."
        text = entry if isinstance(entry, str) else render_hermes(
            [{"name": name, "arguments": arguments} for name, arguments in entry])
        return AgentStep(text=text, message=to_assistant_message(parse(text)))
