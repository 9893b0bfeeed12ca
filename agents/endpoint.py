"""EndpointAgent: any OpenAI-compatible chat endpoint (vLLM, SGLang, OpenAI) as a policy.

The endpoint gets the visible history and the tools. Its answer may carry native ``tool_calls`` or Hermes-style
``<tool_call>`` blocks in the text (servers without a tool parser); both are read by the one tool-call parser,
and the action handed to the environment is the Hermes text of the same calls.
"""

from __future__ import annotations

from typing import Any, Mapping

from agents.base import AgentStep
from cm2_env.llm import make_client
from cm2_env.toolcalls import parse, render_hermes, to_assistant_message


class EndpointAgent:
    """Policy behind an OpenAI-compatible endpoint given by a spec string (see docs/llm.md).

    ``native_tools=False`` sends no ``tools`` parameter (for servers that reject it); the model must then know
    the tools from the system prompt. Sampling keywords (temperature, top_p, max_tokens, ...) are passed through.
    """

    def __init__(self, spec: str, *, native_tools: bool = True, client_options: Mapping[str, Any] | None = None,
                 **sampling: Any):
        self.client = make_client(spec, role="policy", **dict(client_options or {}))
        self.native_tools = native_tools
        self.sampling = sampling

    async def act(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        context: Mapping[str, Any] | None = None,
    ) -> AgentStep:
        result = await self.client.chat(
            openai_conformant(messages), tools=(tools or None) if self.native_tools else None, **self.sampling
        )
        parsed = parse(result.text, tool_calls=result.tool_calls or None)
        if parsed.errors:
            # Keep the raw text: the environment parses it again and answers the malformed call.
            text = result.text or ""
        else:
            text = render_hermes(parsed.calls, content=parsed.content, thinking=parsed.thinking)
        return AgentStep(text=text, message=to_assistant_message(parsed), usage=dict(result.usage or {}))


def openai_conformant(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with every tool message that answers no call of the preceding assistant message (the env's
    answers to malformed ``<tool_call>`` text) turned into a user message: strict OpenAI-compatible servers reject
    orphan tool messages, and the policy still reads what was wrong."""
    out: list[dict[str, Any]] = []
    call_ids: set[str] = set()
    for message in messages:
        role = message.get("role")
        if role == "assistant":
            call_ids = {call.get("id") for call in message.get("tool_calls") or []}
        elif role == "tool" and message.get("tool_call_id") not in call_ids:
            message = {"role": "user", "content": f"[tool error] {message.get('content') or ''}"}
        out.append(message)
    return out
