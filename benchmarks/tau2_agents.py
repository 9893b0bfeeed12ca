"""The participants cm2 plugs into τ²-bench's own orchestrator (``benchmarks/tau2.py`` runs them).

Every agent here subclasses τ²'s ``LLMAgent``, so it starts from exactly what τ²'s own ``llm_agent`` sees: the
same system prompt (τ²'s instructions plus the domain policy), the same tool schemas and the same message
history. Only the step that produces the next assistant message differs:

- :class:`Cm2Agent` asks a cm2 agent (``agents.base.Agent``: an ``hf:`` model, a ``module:attribute`` agent or
  any Agent object), converting τ²'s messages to OpenAI chat messages and the agent's reply back.
- :class:`OracleAgent` replays the task's gold actions in gold order: its own calls as tool calls; at each run
  of user-side actions (telecom) one message asking the user to perform them; then one reply carrying the
  task's communicate strings.
- :class:`NoopAgent` answers every message with the same text and never calls a tool.

:class:`ScriptedUser` is the offline stand-in for τ²'s LLM user simulator: it states the task's reason for
calling and what it knows, performs the task's user-side gold actions (in order) when the agent's message names
them, and otherwise ends the conversation with τ²'s stop token. Numbers measured with it test the plumbing and
the scorer; they are not comparable with published results, which use an LLM user.

This module imports ``tau2`` at import time; ``benchmarks/tau2.py`` imports it only when a run starts.
"""

from __future__ import annotations

import json
from typing import Any

import benchmarks.tau2  # noqa: F401  (sets LITELLM_LOCAL_MODEL_COST_MAP before tau2 imports litellm)
from tau2.agent.llm_agent import LLMAgent, LLMAgentState
from tau2.data_model.message import (
    AssistantMessage, Message, MultiToolMessage, SystemMessage, ToolCall, ToolMessage, UserMessage,
)
from tau2.data_model.tasks import Action, Task
from tau2.user.base import STOP, BaseUser, UserState

from agents.token_path import sampling_seed
from benchmarks.runs import AsyncBridge

NOOP_REPLY = "I am sorry, I cannot help with that."


def openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """τ² messages as OpenAI chat messages (the wire format τ²'s ``llm_agent`` sends through litellm)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": message.content})
        elif isinstance(message, UserMessage):
            out.append({"role": "user", "content": message.content})
        elif isinstance(message, AssistantMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": message.content}
            if message.is_tool_call():
                entry["tool_calls"] = [
                    {"id": call.id, "type": "function",
                     "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}
                    for call in message.tool_calls or []
                ]
            out.append(entry)
        elif isinstance(message, ToolMessage):
            out.append({"role": "tool", "content": message.content, "tool_call_id": message.id})
    return out


def _arguments(raw: Any) -> dict[str, Any]:
    """A tool call's arguments as the JSON object τ² expects. Model output that is not a JSON object becomes
    ``{}`` (τ²'s tool then reports the missing arguments to the agent, as for any wrong call); a dict is passed
    through JSON so that whatever it holds can be written to τ²'s result file."""
    try:
        value = json.loads(raw) if isinstance(raw, str) else json.loads(json.dumps(raw, default=str)) \
            if isinstance(raw, dict) else None
    except (ValueError, TypeError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def assistant_message(message: Any, usage: Any = None) -> AssistantMessage:
    """An OpenAI assistant message (content and/or tool calls) as a τ² ``AssistantMessage``; never raises on
    garbage. Calls without a name are dropped. A reply with neither text nor calls becomes the text
    ``"(no reply)"``: τ² rejects empty messages, and the episode must go on."""
    message = message if isinstance(message, dict) else {}
    content = message.get("content")
    content = content if isinstance(content, str) else None
    raw_calls = message.get("tool_calls")
    calls = []
    for index, call in enumerate(raw_calls if isinstance(raw_calls, list) else []):
        function = (call.get("function") or {}) if isinstance(call, dict) else {}
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            continue
        call_id = call.get("id")
        calls.append(ToolCall(id=call_id if isinstance(call_id, str) and call_id else f"call_{index}", name=name,
                              arguments=_arguments(function.get("arguments"))))
    if not calls and (content is None or not content.strip()):
        content = "(no reply)"
    tokens = None
    if isinstance(usage, dict) and all(isinstance(usage.get(key), int)
                                       for key in ("prompt_tokens", "completion_tokens")):
        tokens = {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"]}
    return AssistantMessage(role="assistant", content=content, tool_calls=calls or None, cost=0.0, usage=tokens)


class _ScriptedAgent(LLMAgent):
    """An ``LLMAgent`` whose next message does not come from litellm; it needs no LLM and keeps τ²'s prompt."""

    def __init__(self, tools: list, domain_policy: str, task: Task | None = None) -> None:
        super().__init__(tools=tools, domain_policy=domain_policy, llm=None, llm_args={})
        self.task = task
        self.seed: int | None = None

    def set_seed(self, seed: int) -> None:  # τ²'s LLMAgent refuses a seed without an LLM
        self.seed = seed

    def generate_next_message(self, message: Any, state: LLMAgentState) -> tuple[AssistantMessage, LLMAgentState]:
        if isinstance(message, MultiToolMessage):
            state.messages.extend(message.tool_messages)
        elif message is not None:
            state.messages.append(message)
        reply = self.reply(state)
        state.messages.append(reply)
        return reply, state

    def reply(self, state: LLMAgentState) -> AssistantMessage:
        raise NotImplementedError


class Cm2Agent(_ScriptedAgent):
    """A cm2 agent (``agents.base.Agent``) inside τ²: it sees τ²'s system prompt, tools and history as OpenAI
    chat messages. Each action's sampling seed is derived from (τ²'s simulation seed, domain, task id, action
    index), so a trial is reproducible whatever the thread scheduling. What the agent raises propagates: the
    runner decides whether it is a transport failure (retried) or the agent's own (recorded)."""

    def __init__(self, tools: list, domain_policy: str, task: Task, agent: Any, bridge: AsyncBridge,
                 domain: str) -> None:
        super().__init__(tools, domain_policy, task)
        self.agent, self.bridge, self.domain = agent, bridge, domain
        self.schemas = [tool.openai_schema for tool in tools]
        self.actions = 0

    def reply(self, state: LLMAgentState) -> AssistantMessage:
        messages = openai_messages(state.system_messages + state.messages)
        context = {"sampling_seed": sampling_seed("tau2", self.seed, self.domain, self.task.id, self.actions)}
        self.actions += 1
        step = self.bridge.run(self.agent.act(messages, self.schemas, context))
        return assistant_message(getattr(step, "message", None), getattr(step, "usage", None))


def _mentions(text: str, action: Action) -> bool:
    lowered = text.lower()
    return action.name.lower() in lowered or action.name.replace("_", " ").lower() in lowered


def gold_segments(task: Task) -> list[tuple[str, list[Action]]]:
    """The task's gold actions as maximal runs of one requestor, in gold order: ``[("assistant", [...]),
    ("user", [...]), ...]``."""
    criteria = task.evaluation_criteria
    segments: list[tuple[str, list[Action]]] = []
    for action in (criteria.actions or []) if criteria is not None else []:
        if segments and segments[-1][0] == action.requestor:
            segments[-1][1].append(action)
        else:
            segments.append((action.requestor, [action]))
    return segments


class OracleAgent(_ScriptedAgent):
    """Gold actions in gold order, then one reply with the communicate strings (see the module docstring)."""

    def __init__(self, tools: list, domain_policy: str, task: Task) -> None:
        super().__init__(tools, domain_policy, task)
        # (content, tool call) per message; the messages are built when sent: τ² orders a trajectory by the
        # messages' creation timestamps before its evaluators replay it.
        self.plan: list[tuple[str | None, ToolCall | None]] = []
        for requestor, actions in gold_segments(task):
            if requestor == "user":
                names = ", ".join(f"{action.name}({json.dumps(action.arguments)})" for action in actions)
                self.plan.append((f"Please do the following on your side: {names}.", None))
            else:
                self.plan.extend((None, ToolCall(id=f"gold_{action.action_id}", name=action.name,
                                                 arguments=action.arguments)) for action in actions)
        communicate = (task.evaluation_criteria.communicate_info or []) if task.evaluation_criteria else []
        self.plan.append((("All done. " + " ".join(str(item) for item in communicate)).strip(), None))

    def reply(self, state: LLMAgentState) -> AssistantMessage:
        if not self.plan:
            return AssistantMessage(role="assistant", content="Is there anything else I can help you with?",
                                    cost=0.0)
        content, call = self.plan.pop(0)
        return AssistantMessage(role="assistant", content=content, tool_calls=[call] if call else None, cost=0.0)


class NoopAgent(_ScriptedAgent):
    """Never calls a tool; answers every message with :data:`NOOP_REPLY`."""

    def reply(self, state: LLMAgentState) -> AssistantMessage:
        return AssistantMessage(role="assistant", content=NOOP_REPLY, cost=0.0)


class ScriptedUser(BaseUser):
    """The offline user (see the module docstring). Deterministic: it needs no LLM and no seed."""

    def __init__(self, task: Task) -> None:
        super().__init__(instructions=str(task.user_scenario), llm=None, llm_args={})
        self.task = task
        self.pending = [actions for requestor, actions in gold_segments(task) if requestor == "user"]
        self.queue: list[Action] = []
        self.calls = 0

    def set_seed(self, seed: int) -> None:
        pass

    @classmethod
    def is_stop(cls, message: UserMessage) -> bool:
        return not message.is_tool_call() and STOP in (message.content or "")

    def get_init_state(self, message_history: list[Message] | None = None) -> UserState:
        return UserState(system_messages=[SystemMessage(role="system", content=self.instructions or "")],
                         messages=list(message_history or []))

    def opening(self) -> str:
        instructions = self.task.user_scenario.instructions
        if isinstance(instructions, str):
            return instructions
        known = f"\n{instructions.known_info}" if instructions.known_info else ""
        return f"{instructions.reason_for_call}{known}"

    def generate_next_message(self, message: Any, state: UserState) -> tuple[UserMessage, UserState]:
        if isinstance(message, MultiToolMessage):
            state.messages.extend(message.tool_messages)
        else:
            state.messages.append(message)
        reply = self._next(message, state)
        state.messages.append(reply)
        return reply, state

    def _next(self, message: Any, state: UserState) -> UserMessage:
        if not self.queue and isinstance(message, AssistantMessage):
            spoken = sum(1 for m in state.messages if isinstance(m, UserMessage) and not m.is_tool_call())
            if spoken == 0:
                return UserMessage(role="user", content=self.opening(), cost=0.0)
            if self.pending and _mentions(message.content or "", self.pending[0][0]):
                self.queue = list(self.pending.pop(0))
            else:
                return UserMessage(role="user", content=STOP, cost=0.0)
        if self.queue:
            action = self.queue.pop(0)
            self.calls += 1
            return UserMessage(role="user", cost=0.0, tool_calls=[ToolCall(
                id=f"user_{self.calls}", name=action.name, arguments=action.arguments, requestor="user")])
        return UserMessage(role="user", content="Done.", cost=0.0)
