"""Turns, steps, agent actions and the canonical renderings (docs/data_format.md, "Turns, steps and actions").

- Turn t (0-based) = the t-th user message and everything up to the next user message. Messages before the
  first user message (the system prompt) belong to no turn.
- Step s (0-based) = the position of a message inside its turn; step 0 is the user message.
- An agent action = one assistant message plus the tool responses that answer it. Checklist satisfaction is
  evaluated after each action.

The functions here work on :class:`~cm2_env.data.models.Message` objects and on plain OpenAI message dicts
alike, because the environment keeps its live transcript as dicts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from cm2_env.data.models import Dialogue, Message

MessageLike = Message | Mapping[str, Any]

_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)


@dataclass(frozen=True)
class Action:
    """One agent action: an assistant message and the tool responses that answer its calls.

    ``step`` is the step index of the assistant message inside its turn; the tool responses occupy the steps
    after it. ``index`` is the 1-based action number a of the paper inside the turn.
    """

    index: int
    step: int
    assistant: MessageLike
    tool_responses: tuple[MessageLike, ...] = ()

    @property
    def messages(self) -> list[MessageLike]:
        return [self.assistant, *self.tool_responses]

    @property
    def is_final_reply(self) -> bool:
        """True for an assistant message without tool calls (the user-visible reply that ends a turn)."""
        return not _get(self.assistant, "tool_calls")


@dataclass(frozen=True)
class Turn:
    """Turn ``index``: the user message (step 0) and the messages that follow it, in order.

    ``start`` is the position of the user message in the dialogue's message list.
    """

    index: int
    start: int
    messages: tuple[MessageLike, ...]
    actions: tuple[Action, ...] = field(default=())

    @property
    def user(self) -> MessageLike:
        return self.messages[0]

    @property
    def ends_with_reply(self) -> bool:
        last = self.messages[-1]
        return _get(last, "role") == "assistant" and not _get(last, "tool_calls")


def _get(message: MessageLike, key: str) -> Any:
    if isinstance(message, Message):
        return getattr(message, key, None)
    return message.get(key)


def role(message: MessageLike) -> str:
    return _get(message, "role")


def content(message: MessageLike) -> str:
    return _get(message, "content") or ""


def split_turns(messages: Sequence[MessageLike]) -> list[Turn]:
    """Segment a message list into turns (messages before the first user message are dropped)."""
    starts = [i for i, message in enumerate(messages) if role(message) == "user"]
    turns = []
    for t, start in enumerate(starts):
        end = starts[t + 1] if t + 1 < len(starts) else len(messages)
        turn_messages = tuple(messages[start:end])
        turns.append(Turn(index=t, start=start, messages=turn_messages, actions=tuple(split_actions(turn_messages))))
    return turns


def split_actions(turn_messages: Sequence[MessageLike]) -> list[Action]:
    """Group a turn's messages (user message first) into agent actions.

    A tool message belongs to the most recent assistant message. Tool messages that precede any assistant
    message of the turn (malformed data) belong to no action.
    """
    actions: list[Action] = []
    current: tuple[int, MessageLike, list[MessageLike]] | None = None
    for step, message in enumerate(turn_messages):
        r = role(message)
        if r == "assistant":
            if current is not None:
                actions.append(Action(len(actions) + 1, current[0], current[1], tuple(current[2])))
            current = (step, message, [])
        elif r == "tool" and current is not None:
            current[2].append(message)
    if current is not None:
        actions.append(Action(len(actions) + 1, current[0], current[1], tuple(current[2])))
    return actions


def turn_complete(turn_messages: Sequence[MessageLike]) -> bool:
    """Whether a turn so far (its user message first) has ended with the assistant's final reply.

    The one definition of "turn complete" that the environment and every judge use: the last message is an
    assistant message without tool calls. A turn whose last message is a tool response -- an answer to a call,
    or the environment's error answer to malformed or invalid call text -- is still in progress, whatever the
    assistant message before it looks like.
    """
    if not turn_messages:
        return False
    last = turn_messages[-1]
    return role(last) == "assistant" and not _get(last, "tool_calls")


def dialogue_turns(dialogue: Dialogue) -> list[Turn]:
    """The turns of a reference dialogue."""
    return split_turns(dialogue.messages)


# --- renderings -----------------------------------------------------------------------------------------


def split_think(text: str) -> tuple[str, str]:
    """``(thinking, user_visible_reply)`` of an assistant content string, both stripped.

    The thinking is the text of the ``<think>...</think>`` blocks (joined by newlines); the reply is the content
    with those blocks removed. An unclosed ``<think>`` counts as thinking up to the end of the text.
    """
    text = text or ""
    thoughts = [m.strip() for m in _THINK_RE.findall(text)]
    reply = _THINK_RE.sub("", text)
    if "<think>" in reply:
        head, _, tail = reply.partition("<think>")
        thoughts.append(tail.strip())
        reply = head
    if reply.lstrip().startswith("</think>"):  # templates that open the block in the prompt
        thought, _, reply = reply.partition("</think>")
        thoughts.insert(0, thought.strip())
    return "\n".join(t for t in thoughts if t), reply.strip()


def render_tool_calls(tool_calls: Iterable[Any] | None) -> str:
    """``NAME(ARGS)`` per call, one per line, ARGS = ``json.dumps(json.loads(arguments), ensure_ascii=False)``.

    Arguments that are not valid JSON are rendered verbatim.
    """
    lines = []
    for call in tool_calls or []:
        function = call.function if hasattr(call, "function") else call.get("function", {})
        name = function.name if hasattr(function, "name") else function.get("name", "")
        arguments = function.arguments if hasattr(function, "arguments") else function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.dumps(json.loads(arguments), ensure_ascii=False)
            except json.JSONDecodeError:
                pass
        else:
            arguments = json.dumps(arguments, ensure_ascii=False)
        lines.append(f"{name}({arguments})")
    return "\n".join(lines)


def render(message: MessageLike, source: str) -> str:
    """The canonical rendering of ``message`` for an evidence source / focus (docs/data_format.md, "A checklist item").

    Returns ``""`` when the message's role does not match the source's role.
    """
    r = role(message)
    if source == "assistant.tool_calls":
        return render_tool_calls(_get(message, "tool_calls")) if r == "assistant" else ""
    if source == "assistant.content.thinking":
        return split_think(content(message))[0] if r == "assistant" else ""
    if source == "assistant.content.user_visible_reply":
        return split_think(content(message))[1] if r == "assistant" else ""
    if source == "user.content":
        return content(message) if r == "user" else ""
    if source == "tool.content":
        return content(message) if r == "tool" else ""
    raise ValueError(f"unknown rendering source {source!r}")
