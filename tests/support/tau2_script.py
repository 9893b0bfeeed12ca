"""Scripted answers for τ²-bench's LLM participants, served by ``ScriptedServer`` (a test double of an LLM API).

``Tau2Script(domain)`` is a responder for ``tests.support.scripted_server.ScriptedServer``. It tells the two
kinds of request τ² sends apart by their system prompt: τ²'s agent prompt has a ``<policy>`` block, its user
simulator's prompt a ``<scenario>`` block.

- User simulator: the first reply is the task's reason for calling, tagged ``[task <domain>/<id>]`` (two tasks
  can share a reason, so answers are keyed by the tag, never by message text); once the agent has said
  ``All done`` the reply is τ²'s stop token; otherwise ``I have nothing to add.``.
- Agent: the task's gold assistant actions as tool calls, one per request, in gold order (the position is the
  number of tool calls already in the conversation); then ``All done.`` plus the task's communicate strings.

Only domains without user-side actions (airline, retail) can be scripted this way.
"""

from __future__ import annotations

import json
import re
from typing import Any

TAG = re.compile(r"\[task (\w+)/([^\]]+)\]")


def gold_reply(task: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The next assistant message of a gold-replaying agent: the task's next gold assistant action as a tool call
    (the position is the number of tool calls already in ``messages``), then ``All done.`` plus the task's
    communicate strings."""
    done = sum(len(m.get("tool_calls") or []) for m in messages if m["role"] == "assistant")
    gold = [action for action in task.evaluation_criteria.actions or [] if action.requestor == "assistant"]
    if done < len(gold):
        action = gold[done]
        return {"role": "assistant", "content": None, "tool_calls": [{
            "id": f"call_{done}", "type": "function",
            "function": {"name": action.name, "arguments": json.dumps(action.arguments)}}]}
    communicate = task.evaluation_criteria.communicate_info or []
    return {"role": "assistant", "content": ("All done. " + " ".join(communicate)).strip()}


class Tau2Script:
    def __init__(self, domain: str) -> None:
        from tau2.run import load_tasks

        self.domain = domain
        self.tasks = {task.id: task for task in load_tasks(task_set_name=domain, task_split_name="base")}
        self.by_scenario = {str(task.user_scenario): task for task in self.tasks.values()}
        self.kinds: list[str] = []

    def __call__(self, request: dict[str, Any]) -> dict[str, Any] | str:
        messages = request["messages"]
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        if "<scenario>" in system:
            self.kinds.append("user")
            return self._user(system, messages)
        if "<policy>" in system:
            self.kinds.append("agent")
            return self._agent(messages)
        raise ValueError(f"not a τ² request: {system[:80]!r}")

    def _user(self, system: str, messages: list[dict[str, Any]]) -> str:
        task = next(task for scenario, task in self.by_scenario.items() if scenario in system)
        spoken = [m for m in messages[1:] if m["role"] == "assistant"]  # the simulator's own earlier turns
        if not spoken:
            instructions = task.user_scenario.instructions
            reason = instructions if isinstance(instructions, str) else instructions.reason_for_call
            return f"{reason} [task {self.domain}/{task.id}]"
        agent_said = messages[-1].get("content") or ""
        return "###STOP###" if agent_said.startswith("All done") else "I have nothing to add."

    def _agent(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        opening = next(m["content"] for m in messages if m["role"] == "user")
        return gold_reply(self.tasks[TAG.search(opening).group(2)], messages)


class GoldAgent:
    """An in-process ``agents.base.Agent`` for τ²'s retail domain with the scripted user: it finds the task by
    the user's opening (reason for calling plus known info, unique in retail) and answers like ``Tau2Script``'s
    agent side. ``fail_tasks``: task ids on which ``act`` raises ``error`` (default: the endpoint could not be
    reached, a transport failure); ``calls`` counts acts."""

    def __init__(self, fail_tasks: tuple[str, ...] = (), error: type[Exception] | None = None) -> None:
        from tau2.run import load_tasks

        self.tasks = {}
        for task in load_tasks(task_set_name="retail", task_split_name="base"):
            instructions = task.user_scenario.instructions
            known = f"\n{instructions.known_info}" if instructions.known_info else ""
            self.tasks[f"{instructions.reason_for_call}{known}"] = task
        self.fail_tasks, self.error = fail_tasks, error
        self.calls = 0

    async def act(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], context: Any = None) -> Any:
        from agents.base import AgentStep

        self.calls += 1
        opening = next(m["content"] for m in messages if m["role"] == "user")
        task = self.tasks[opening]
        if task.id in self.fail_tasks:
            from cm2_env.llm.errors import LLMConnectionError

            raise (self.error or LLMConnectionError)(f"scripted failure on task {task.id}")
        message = gold_reply(task, messages)
        return AgentStep(text=message["content"] or "", message=message)
