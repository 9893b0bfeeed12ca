"""The "ansi" rendering of an episode: the transcript with each checklist verdict where it was earned.

After every agent action the items first satisfied by it are listed (``✓``); at the end of each reached turn the
items never satisfied are listed (``✗``, with ``[required]`` for strictness items). Long message contents are
shortened to :data:`MAX_CONTENT_CHARS` characters so that a transcript stays readable in a terminal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cm2_env.data.turns import render_tool_calls
from cm2_env.text import shorten

if TYPE_CHECKING:
    from cm2_env.episode import EpisodeState

MAX_CONTENT_CHARS = 600


def render_transcript(episode: "EpisodeState", end_reason: str | None = None) -> str:
    """The transcript of ``episode`` so far, as plain text (see the module docstring)."""
    lines: list[str] = [f"dialogue {episode.plan.dialogue.id}"]
    turn, action = -1, 0

    def close_action() -> None:
        if turn >= 0 and action > 0:
            lines.extend(_satisfied_lines(episode, turn, action))

    def close_turn() -> None:
        close_action()
        if turn >= 0:
            lines.extend(_unsatisfied_lines(episode, turn))

    for message in episode.messages:
        role = message.get("role")
        if role == "user":
            close_turn()
            turn, action = turn + 1, 0
            lines.append(f"── turn {turn} " + "─" * 40)
            lines.append(f"[user] {_short(message.get('content'))}")
        elif role == "assistant":
            close_action()
            action += 1
            lines.append(f"[assistant {action}] {_short(message.get('content'))}".rstrip())
            calls = render_tool_calls(message.get("tool_calls"))
            lines.extend(f"    call {line}" for line in calls.splitlines())
        elif role == "tool":
            lines.append(f"[tool {message.get('name', '')}] {_short(message.get('content'))}")
        else:
            lines.append(f"[{role}] {_short(message.get('content'))}")
    close_turn()
    total = episode.trajectory_reward()
    status = f"ended: {end_reason}" if end_reason else "running"
    failed = f" FAILED ({episode.failure})" if episode.failed else ""
    lines.append(f"── {status}{failed}; R so far = {total:.4f}")
    return "\n".join(lines) + "\n"


def _items(episode: "EpisodeState", turn: int) -> list[tuple[str, Any]]:
    """(verdict key, item) of every item of ``turn`` in the variants in use."""
    keys = episode.plan.variant_keys
    return [(key + item.id, item) for key, items in zip(keys, episode.plan.checklists[turn]) for item in items]


def _satisfied_lines(episode: "EpisodeState", turn: int, action: int) -> list[str]:
    records = episode.turns[turn].records
    return [
        f"    ✓ {key} ({records[key]['source']}, w={item.weight:g}) {item.question}"
        for key, item in _items(episode, turn)
        if records[key]["passed"] and records[key]["first_action"] == action
    ]


def _unsatisfied_lines(episode: "EpisodeState", turn: int) -> list[str]:
    records = episode.turns[turn].records
    return [
        f"    ✗ {key}{' [required]' if item.required_for_next_turn else ''} (w={item.weight:g}) {item.question}"
        for key, item in _items(episode, turn)
        if not records[key]["passed"]
    ]


def _short(content: Any) -> str:
    text = "" if content is None else str(content)
    return shorten(text, MAX_CONTENT_CHARS).replace("\n", "\n    ")
