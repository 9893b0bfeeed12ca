"""EndpointAgent: any OpenAI-compatible chat endpoint (vLLM, SGLang, OpenAI) as a policy.

The endpoint gets the visible history and the tools. Its answer may carry native ``tool_calls`` or Hermes-style
``<tool_call>`` blocks in the text (servers without a tool parser); both are read by the one tool-call parser,
and the action handed to the environment is the Hermes text of the same calls. A native call whose arguments do
not decode is written into that text as a call with its raw arguments string, so the environment answers it
exactly as it answers malformed call text, and the valid calls of the same message stay in the action.

With ``context["sampling_seed"]`` (the rollout engine gives one per action) the request carries it as ``seed``,
which vLLM and SGLang honour per request: the endpoint's draws then depend on the action's key, not on what
else the server is batching. A server error saying the prompt exceeds the model's context length becomes
:class:`~agents.base.ContextLimitExceeded` (the episode is truncated, not failed).
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from agents.base import AgentStep, ContextLimitExceeded
from cm2_env.llm import LLMStatusError, make_client
from cm2_env.toolcalls import parse, render_hermes, to_assistant_message

_CONTEXT_LENGTH = re.compile(r"maximum context length|context[_ ]length|max_model_len|prompt is too long|"
                             r"too many tokens", re.IGNORECASE)


def context_overflow(exc: Exception) -> bool:
    """Whether a server's error says the prompt (plus the completion budget) exceeds the model's context: then
    the agent raises :class:`~agents.base.ContextLimitExceeded` and the episode is truncated, not failed."""
    return isinstance(exc, LLMStatusError) and exc.status_code == 400 and bool(_CONTEXT_LENGTH.search(str(exc)))


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

    async def aclose(self) -> None:
        """Close the client's connection pools."""
        await self.client.aclose()

    async def act(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        context: Mapping[str, Any] | None = None,
    ) -> AgentStep:
        sampling = dict(self.sampling)
        if context is not None and context.get("sampling_seed") is not None and "seed" not in sampling:
            sampling["seed"] = int(context["sampling_seed"])
        try:
            result = await self.client.chat(
                openai_conformant(messages), tools=(tools or None) if self.native_tools else None, **sampling
            )
        except LLMStatusError as exc:
            if context_overflow(exc):
                raise ContextLimitExceeded(str(exc)) from exc
            raise
        parsed = parse(result.text, tool_calls=result.tool_calls or None)
        if result.tool_calls and any(not parse("", tool_calls=[call]).calls for call in result.tool_calls):
            text = action_text(result.text or "", result.tool_calls)
        elif parsed.errors:
            # Keep the raw text: the environment parses it again and answers the malformed call.
            text = result.text or ""
        else:
            text = render_hermes(parsed.calls, content=parsed.content, thinking=parsed.thinking)
        return AgentStep(text=text, message=to_assistant_message(parsed), usage=dict(result.usage or {}))


def action_text(text: str, tool_calls: list[Any]) -> str:
    """The Hermes action text of an answer with native ``tool_calls`` of which some do not decode: its text,
    then every call in order -- a valid one as it is, a broken one as a call whose arguments are the raw string
    the server sent (or, without a name, the raw call), which the environment's parser reports as malformed."""
    blocks = []
    for call in tool_calls:
        decoded = parse("", tool_calls=[call])
        if decoded.calls:
            blocks.append(render_hermes(decoded.calls))
            continue
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        raw = function.get("arguments") if isinstance(function, dict) else call
        body = {"name": name, "arguments": raw if isinstance(raw, str) else json.dumps(raw, default=str)} \
            if isinstance(name, str) and name else {"call": json.dumps(call, default=str)}
        blocks.append("<tool_call>\n" + json.dumps(body, ensure_ascii=False).replace("<", "\\u003c")
                      + "\n</tool_call>")
    head = parse(text)
    prefix = render_hermes([], content=head.content, thinking=head.thinking)
    return "\n".join(part for part in [prefix, *blocks] if part)


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
