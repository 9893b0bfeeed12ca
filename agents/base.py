"""The agent contract: what a policy must provide to act in CM2ToolUse-v0 (and in benchmark adapters).

An agent sees the visible history as OpenAI chat messages plus the OpenAI function tools, and returns one
action: the assistant's output for this step. The environment's action space is text, so every agent returns
``AgentStep.text`` (Hermes/Qwen style: optional ``<think>`` block, then ``<tool_call>{...}</tool_call>`` blocks
or a final reply); ``AgentStep.message`` is the same action as an OpenAI assistant message for callers that
prefer structure. Trainable agents also fill the token bookkeeping fields (docs/architecture.md, "Token
bookkeeping"): the exact prompt and generated token ids and the sampling logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, runtime_checkable

#: What of the environment's ``info`` an agent sees by default: where it is, not how it is scored.
AGENT_CONTEXT_KEYS: tuple[str, ...] = ("dialogue_id", "turn", "action", "reference_turns")


@dataclass
class AgentStep:
    """One action of an agent.

    text: the action string handed to ``env.step``.
    message: the action as an OpenAI assistant message (``content`` and optional ``tool_calls``).
    prompt_ids / completion_ids / logprobs: token bookkeeping of trainable agents (``None`` otherwise);
        ``logprobs[i]`` is the sampling log-probability of ``completion_ids[i]``.
    usage: token counts and other per-call accounting (no timings needed for determinism).
    """

    text: str
    message: dict[str, Any]
    prompt_ids: list[int] | None = None
    completion_ids: list[int] | None = None
    logprobs: list[float] | None = None
    usage: dict[str, Any] = field(default_factory=dict)


class ContextLimitExceeded(Exception):
    """Raised by ``act`` when the prompt does not fit the policy's context (``max_prompt_tokens``, or a server's
    context length). Not a failure of the episode: the rollout engine ends it as truncated
    (``end_reason="max_prompt_tokens"``) and keeps what it earned."""


@runtime_checkable
class Agent(Protocol):
    """A policy. ``act`` is a coroutine so that many episodes can share one event loop."""

    async def act(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        context: Mapping[str, Any] | None = None,
    ) -> AgentStep:
        """Return the next action given the visible history ``messages`` and the available ``tools``.

        ``context`` is optional side information from the caller. The rollout engine passes
        :data:`AGENT_CONTEXT_KEYS` of the environment's ``info`` -- ``dialogue_id``, ``turn``, ``action`` and
        ``reference_turns``, never the verdicts or rewards -- plus ``sampling_seed``, the seed of this action's
        random draws. Agents that do not need it ignore it; callers that have none (benchmarks) omit it.
        Raise :class:`ContextLimitExceeded` when the prompt does not fit.
        """
        ...
