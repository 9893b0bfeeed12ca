"""TurnView: the current turn's transcript prefix in the forms the rule judge compares (calls with decoded
arguments, tool results with an ok flag, reply/thinking texts, facts the conversation makes available, the
reference turn's calls). Pure reads of a :class:`~cm2_env.judge.base.JudgeRequest`; computed lazily, once.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from typing import Any

from cm2_env.data.models import ChecklistItem, Dialogue
from cm2_env.data.turns import render_tool_calls, split_think, split_turns
from cm2_env.judge.base import JudgeRequest
from cm2_env.judge.values import facts, words
from cm2_env.toolcalls import parse


def result_status(content: str) -> str:
    """What a tool response says about its call: ``invalid`` (a JSON object with a truthy ``error``: the
    simulator's and the environment's answer to an unknown tool, a schema violation or malformed call text -- the
    call was not executed), ``exception`` (a truthy ``exception``: the tool ran and failed) or ``ok``."""
    try:
        parsed: Any = json.loads(content)
    except ValueError:
        return "ok"
    if isinstance(parsed, dict) and parsed.get("error"):
        return "invalid"
    if isinstance(parsed, dict) and parsed.get("exception"):
        return "exception"
    return "ok"


def result_ok(content: str) -> bool:
    """Whether a tool response reports success (:func:`result_status` is ``ok``)."""
    return result_status(content) == "ok"


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
        """(tool name, decoded arguments) of every call of the turn so far, in order."""
        return [(name, arguments) for name, arguments, _ in self._calls]

    @cached_property
    def executed_calls(self) -> list[tuple[str, Any]]:
        """The calls the tool executed: not answered as invalid (``{"error": ...}``: unknown tool, schema
        violation, no simulator) and answered at all. A call whose tool raised a domain exception (wrong
        password...) was executed; whether it succeeded is what tool-result items and :attr:`successful_calls`
        tell."""
        return [(name, arguments) for name, arguments, status in self._calls if status != "invalid"]

    @cached_property
    def successful_calls(self) -> list[tuple[str, Any]]:
        """The executed calls whose response reports neither an error nor an exception."""
        return [(name, arguments) for name, arguments, status in self._calls if status == "ok"]

    @cached_property
    def _calls(self) -> list[tuple[str, Any, str]]:
        """(name, arguments, status) per call; status ok | exception | invalid (also: never answered)."""
        status_by_id = {}
        for message in self.messages:
            if message.get("role") == "tool":
                status_by_id[message.get("tool_call_id")] = result_status(message.get("content") or "")
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
                call_id = call.get("id") if isinstance(call, dict) else None
                out.append((str(function.get("name", "")), arguments, status_by_id.get(call_id, "invalid")))
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
            out.append((message.get("name") or names.get(message.get("tool_call_id"), ""), parsed, result_ok(text)))
        return out

    def texts(self, focus: str) -> list[str]:
        """The reasoning (focus ``assistant.content.thinking``) or the user-visible text of each assistant message
        of the turn, with tool-call markup removed: call text is not reply text."""
        thinking = focus == "assistant.content.thinking"
        out = []
        for message in self.messages:
            if message.get("role") == "assistant":
                parsed = parse(message.get("content") or "")
                out.append(parsed.thinking if thinking else parsed.content)
        return out

    @cached_property
    def user_texts(self) -> list[str]:
        """What the user said so far: every user message of the conversation up to this turn's."""
        return [m.get("content") or "" for m in [*self.request.history, *self.request.current[:1]]
                if m.get("role") == "user"]

    @property
    def final(self) -> bool:
        """The turn has its final reply (``JudgeRequest.turn_complete``)."""
        return self.request.turn_complete

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

    @cached_property
    def reference_results(self) -> list[tuple[str, Any, str, bool]]:
        """(tool, decoded arguments, response text, ok) of every call the reference made in this turn, ok = its
        recorded response reports no error or exception."""
        if self.reference is None:
            return []
        out = []
        for action in self.reference.actions:
            responses = {getattr(r, "tool_call_id", None): r for r in action.tool_responses}
            for position, call in enumerate(action.assistant.calls):
                response = responses.get(call.id)
                if response is None and position < len(action.tool_responses):
                    response = action.tool_responses[position]
                text = (getattr(response, "content", None) or "") if response is not None else ""
                out.append((call.function.name, call.function.parsed_arguments(), text,
                            response is not None and result_ok(text)))
        return out

    @cached_property
    def reference_reply(self) -> str:
        """The user-visible text of the reference turn's final reply ("" when it has none)."""
        if self.reference is None or not self.reference.ends_with_reply:
            return ""
        return parse(getattr(self.reference.messages[-1], "content", None) or "").content

    def named_tools(self, item: ChecklistItem) -> set[str]:
        """Tools the item names, or describes by their words ("creating a calendar event" -> CreateEvent)."""
        text = " ".join([item.question, item.pass_condition, *item.failure_examples])
        named = {name for name in self.dialogue.tool_names if re.search(rf"\b{re.escape(name)}\b", text)}
        if named:
            return named
        stems = {w[:5] for w in words(item.question)}
        for name in self.dialogue.tool_names:
            parts = [p.lower() for p in re.findall(r"[A-Z][a-z]*|[a-z]+", name)]
            if parts and parts[0][:5] in stems and all(p[:5] in stems for p in parts[1:] if len(p) > 3):
                named.add(name)
        return named

    def reference_message(self, turn: int, step: int) -> Any:
        turns = self._turns
        if turn < len(turns) and step < len(turns[turn].messages):
            return turns[turn].messages[step]
        return None
