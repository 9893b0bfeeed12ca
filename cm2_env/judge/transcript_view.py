"""TurnView: the current turn's transcript prefix in the forms the rule judge compares (calls with decoded
arguments, tool results with an ok flag, reply/thinking texts, facts the conversation makes available, the
reference turn's calls). Pure reads of a :class:`~cm2_env.judge.base.JudgeRequest`; computed lazily, once.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

from cm2_env.data.models import Dialogue
from cm2_env.data.turns import render_tool_calls, split_think, split_turns
from cm2_env.judge.base import JudgeRequest
from cm2_env.judge.values import facts


class TurnView:
    """What the transcript prefix of the current turn shows, in the forms the rules compare."""

    def __init__(self, request: JudgeRequest) -> None:
        self.request = request
        self.dialogue: Dialogue = request.dialogue
        self.messages = [m for m in request.current[1:] if isinstance(m, dict)]
        self._turns = split_turns(self.dialogue.messages)
        self.reference = self._turns[request.turn] if request.turn < len(self._turns) else None

    @cached_property
    def calls(self) -> list[tuple[str, Any]]:
        out = []
        for message in self.messages:
            for call in message.get("tool_calls") or []:
                function = call.get("function", {}) if isinstance(call, dict) else {}
                arguments = function.get("arguments", "{}")
                if isinstance(arguments, str):
                    try:
                        arguments = json.loads(arguments) if arguments.strip() else {}
                    except ValueError:
                        pass
                out.append((str(function.get("name", "")), arguments))
        return out

    @cached_property
    def tool_results(self) -> list[tuple[str, Any, bool]]:
        """(tool name, parsed content or raw text, ok) per tool response; ok = no exception/error reported."""
        names = {}
        for message in self.messages:
            for call in message.get("tool_calls") or []:
                if isinstance(call, dict):
                    names[call.get("id")] = call.get("function", {}).get("name", "")
        out = []
        for message in self.messages:
            if message.get("role") != "tool":
                continue
            text = message.get("content") or ""
            try:
                parsed: Any = json.loads(text)
            except ValueError:
                parsed = text
            ok = not (isinstance(parsed, dict) and (parsed.get("exception") or parsed.get("error")))
            out.append((message.get("name") or names.get(message.get("tool_call_id"), ""), parsed, ok))
        return out

    def texts(self, focus: str) -> list[str]:
        index = 0 if focus == "assistant.content.thinking" else 1
        return [split_think(m.get("content") or "")[index] for m in self.messages if m.get("role") == "assistant"]

    @cached_property
    def final(self) -> bool:
        """The turn has its final reply: the last assistant message has no tool calls."""
        assistants = [m for m in self.messages if m.get("role") == "assistant"]
        return bool(assistants) and not assistants[-1].get("tool_calls")

    @cached_property
    def grounded_facts(self) -> set[str]:
        """Facts the conversation makes available: system/user/tool texts, earlier turns, this turn's calls."""
        texts = []
        for message in [*self.request.history, *self.request.current[:1]]:
            texts.append(split_think(message.get("content") or "")[1] if message.get("role") == "assistant"
                         else message.get("content") or "")
        texts += [m.get("content") or "" for m in self.messages if m.get("role") == "tool"]
        texts.append(render_tool_calls([c for m in self.messages for c in m.get("tool_calls") or []]))
        return set().union(*(facts(t) for t in texts)) if texts else set()

    @cached_property
    def reference_calls(self) -> list[tuple[str, Any]]:
        if self.reference is None:
            return []
        return [(c.function.name, c.function.parsed_arguments()) for a in self.reference.actions
                for c in a.assistant.calls]

    def reference_message(self, turn: int, step: int) -> Any:
        turns = self._turns
        if turn < len(turns) and step < len(turns[turn].messages):
            return turns[turn].messages[step]
        return None
