"""Descriptive statistics of a dialogue dataset (what ``cm2 data stats`` prints).

Contract: :func:`dataset_stats` is pure: dialogues in, a JSON-serialisable dict out. Counts are ints, means and
shares are floats (0.0 for an empty denominator). Checklist statistics run over every turn entry of every
checklist variant (for the usual single-variant data: over the turns). Keys:

- ``dialogues``, ``turns``, ``turns_per_dialogue_mean``/``_max``, ``messages``
- ``actions`` (agent actions: an assistant message with its tool responses), ``actions_per_turn_mean``/``_max``
- ``tool_calls``, ``tool_calls_per_dialogue_mean``, ``tools_per_dialogue_mean``
- ``reasoning_share``: share of assistant messages with non-empty ``<think>`` content
- ``dialogues_with_checklists``, ``checklist_variants``, ``items``, ``items_per_turn_mean``/``_max``
- ``required_share``: share of items with ``required_for_next_turn``; ``dependency_share``: share of items with a
  dependency; ``evidence_per_item_mean``
- ``focus``: ``{focus value: item count}`` for every focus value (zeros included)
"""

from __future__ import annotations

from typing import Any, Sequence

from cm2_env.data.models import FOCUS_VALUES, Dialogue
from cm2_env.data.turns import dialogue_turns, split_think


def dataset_stats(dialogues: Sequence[Dialogue]) -> dict[str, Any]:
    """Counts, means and distributions of ``dialogues`` (see the module docstring for the keys)."""
    turns_per_dialogue, actions_per_turn = [], []
    messages = tool_calls = tools = assistant_messages = reasoning_messages = 0
    for dialogue in dialogues:
        turns = dialogue_turns(dialogue)
        turns_per_dialogue.append(len(turns))
        actions_per_turn.extend(len(turn.actions) for turn in turns)
        messages += len(dialogue.messages)
        tools += len(dialogue.tools)
        for message in dialogue.messages:
            if message.role == "assistant":
                assistant_messages += 1
                tool_calls += len(message.calls)
                reasoning_messages += bool(split_think(message.text)[0])
    n = len(dialogues)
    return {
        "dialogues": n,
        "turns": sum(turns_per_dialogue),
        "turns_per_dialogue_mean": _mean(turns_per_dialogue),
        "turns_per_dialogue_max": max(turns_per_dialogue, default=0),
        "messages": messages,
        "actions": sum(actions_per_turn),
        "actions_per_turn_mean": _mean(actions_per_turn),
        "actions_per_turn_max": max(actions_per_turn, default=0),
        "tool_calls": tool_calls,
        "tool_calls_per_dialogue_mean": _ratio(tool_calls, n),
        "tools_per_dialogue_mean": _ratio(tools, n),
        "reasoning_share": _ratio(reasoning_messages, assistant_messages),
        **checklist_stats(dialogues),
    }


def checklist_stats(dialogues: Sequence[Dialogue]) -> dict[str, Any]:
    """The checklist part of :func:`dataset_stats`."""
    items_per_turn: list[int] = []
    focus = dict.fromkeys(FOCUS_VALUES, 0)
    required = dependent = evidence = variants = with_checklists = 0
    for dialogue in dialogues:
        with_checklists += bool(dialogue.checklists)
        variants += len(dialogue.checklists)
        for variant in dialogue.checklists:
            for items in variant:
                items_per_turn.append(len(items))
                for item in items:
                    focus[item.focus_on] = focus.get(item.focus_on, 0) + 1
                    required += item.required_for_next_turn
                    dependent += bool(item.dependence)
                    evidence += len(item.evidence)
    items = sum(items_per_turn)
    return {
        "dialogues_with_checklists": with_checklists,
        "checklist_variants": variants,
        "items": items,
        "items_per_turn_mean": _mean(items_per_turn),
        "items_per_turn_max": max(items_per_turn, default=0),
        "required_share": _ratio(required, items),
        "dependency_share": _ratio(dependent, items),
        "evidence_per_item_mean": _ratio(evidence, items),
        "focus": focus,
    }


def _mean(values: Sequence[int]) -> float:
    return _ratio(sum(values), len(values))


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / denominator if denominator else 0.0
