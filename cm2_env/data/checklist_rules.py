"""The checklist rules of docs/data_format.md, checked on raw (possibly malformed) checklist data.

Contract: every function takes decoded JSON (lists/dicts) and the turns of the dialogue, and yields
``(field path, message)`` findings; parts whose structure is broken are skipped (the pydantic models report
those). Rules: one entry per turn, at least one item per turn, weights sum to 1 per turn (within
:data:`WEIGHT_TOLERANCE`), unique item ids per turn, dependency targets exist in the same turn and focus on
``tool.content``, no dependency cycles, evidence turn/step pointers in range and matching the role of ``from``,
and snippets that are non-empty verbatim substrings of the canonical rendering (:func:`cm2_env.data.turns.render`).
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Mapping

from cm2_env.data.models import EVIDENCE_SOURCES
from cm2_env.data.turns import Turn, render
from cm2_env.text import shorten

#: Tolerance on the per-turn weight sum.
WEIGHT_TOLERANCE = 1e-6

Finding = tuple[str, str]  # (field path, message)


def checklist_problems(checklists: Any, turns: list[Turn]) -> Iterator[Finding]:
    """The checklist rules of docs/data_format.md for every variant and turn."""
    if not isinstance(checklists, list):
        return
    for v, variant in enumerate(checklists):
        if not isinstance(variant, list):
            continue
        if len(variant) != len(turns):
            yield (f"checklists.{v}",
                   f"has {len(variant)} turn entries but the dialogue has {len(turns)} turns; "
                   "give exactly one list of items per turn")
        for t, items in enumerate(variant):
            if isinstance(items, list):
                yield from turn_checklist_problems(items, f"checklists.{v}.{t}", turns)


def turn_checklist_problems(items: list, field: str, turns: list[Turn]) -> Iterator[Finding]:
    """Weights, ids, dependencies and evidence of the items of one turn."""
    if not items:
        yield field, "this turn has no checklist items; add at least one item (the weights of a turn sum to 1)"
        return
    by_index = {i: item for i, item in enumerate(items) if isinstance(item, dict)}
    yield from _weight_sum_problems(items, field)
    index_of_id: dict[str, int] = {}
    for i, item in by_index.items():
        item_id = item.get("id")
        if not isinstance(item_id, str) or not item_id:
            continue
        if item_id in index_of_id:
            yield (f"{field}.{i}.id", f"duplicate item id {item_id!r} (also item {index_of_id[item_id]} of this turn); "
                                      "number the items of a turn uniquely (C0, C1, ...)")
        else:
            index_of_id[item_id] = i
    yield from _dependency_problems(by_index, index_of_id, field)
    for i, item in by_index.items():
        evidence = item.get("evidence")
        if isinstance(evidence, list):
            for e, pointer in enumerate(evidence):
                if isinstance(pointer, dict):
                    yield from evidence_problems(pointer, f"{field}.{i}.evidence.{e}", turns)


def _weight_sum_problems(items: list, field: str) -> Iterator[Finding]:
    weights = [item.get("weight") if isinstance(item, dict) else None for item in items]
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
        return  # a missing or non-numeric weight is a structural problem, reported on the item itself
    total = sum(weights)
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        yield (field, f"the item weights of this turn sum to {total:.6g}, not 1; "
                      "rescale them so they sum to 1 (each weight is the item's share of the turn)")


def _dependency_problems(by_index: dict[int, dict], index_of_id: dict[str, int], field: str) -> Iterator[Finding]:
    graph: dict[str, list[str]] = {}
    for i, item in by_index.items():
        dependence = item.get("dependence")
        if not isinstance(dependence, list):
            continue
        item_id = item.get("id")
        for k, target in enumerate(dependence):
            if not isinstance(target, str):
                continue
            if target not in index_of_id:
                known = ", ".join(index_of_id) or "none"
                yield (f"{field}.{i}.dependence.{k}",
                       f"depends on {target!r}, which is not an item of this turn (items: {known}); "
                       "use the id of an item of the same turn")
                continue
            focus = by_index[index_of_id[target]].get("focus_on")
            if focus != "tool.content":
                yield (f"{field}.{i}.dependence.{k}",
                       f"depends on {target!r}, which focuses on {focus!r}; a dependency must be an item that "
                       "focuses on 'tool.content' (a prerequisite tool result): drop it or depend on such an item")
            if isinstance(item_id, str) and index_of_id.get(item_id) == i:
                graph.setdefault(item_id, []).append(target)
    for cycle in dependency_cycles(graph):
        first = min(index_of_id[item_id] for item_id in cycle[:-1])
        yield (f"{field}.{first}.dependence",
               f"dependency cycle {' -> '.join(cycle)}; remove one of these dependencies so the items can be "
               "satisfied in order")


def dependency_cycles(graph: Mapping[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has a cycle, as ``[a, b, ..., a]``.

    ``graph`` maps an item id to the ids it depends on. Pure; deterministic for a given insertion order.
    """
    order, low, on_stack, stack, components = {}, {}, set(), [], []

    def connect(node: str) -> None:  # Tarjan's algorithm; checklists are tiny, so recursion depth is no issue
        order[node] = low[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, []):
            if succ not in order:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], order[succ])
        if low[node] == order[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(component)

    for node in list(graph):
        if node not in order:
            connect(node)
    cycles = []
    for component in components:
        members = set(component)
        if len(component) == 1 and component[0] not in graph.get(component[0], []):
            continue
        start = min(component, key=lambda n: order[n])
        cycles.append(_cycle_through(start, graph, members))
    return sorted(cycles, key=lambda c: order[c[0]])


def _cycle_through(start: str, graph: Mapping[str, list[str]], members: set[str]) -> list[str]:
    """A shortest path start -> ... -> start inside one strongly connected component (breadth first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in graph.get(node, []):
                if succ not in members:
                    continue
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return list(reversed(path)) + [start]
                if succ not in parent:
                    parent[succ] = node
                    following.append(succ)
        frontier = following
    return [start, start]


def evidence_problems(pointer: dict, field: str, turns: list[Turn]) -> Iterator[Finding]:
    """Turn/step in range, ``from`` matching the role at that step, and a verbatim, non-empty snippet."""
    turn, step, source, snippet = pointer.get("turn"), pointer.get("step"), pointer.get("from"), pointer.get("snippet")
    if not _is_index(turn):
        return
    if turn >= len(turns):
        yield (f"{field}.turn", f"turn {turn} is out of range: the dialogue has {len(turns)} turn(s) "
                                f"(0..{len(turns) - 1}); point at the turn the evidence comes from")
        return
    messages = turns[turn].messages
    if not _is_index(step):
        return
    if step >= len(messages):
        yield (f"{field}.step", f"step {step} is out of range: turn {turn} has {len(messages)} steps "
                                f"(0..{len(messages) - 1}); point at the message the evidence comes from")
        return
    if source not in EVIDENCE_SOURCES:
        return
    message = messages[step]
    expected_role = source.split(".")[0]
    if message.get("role") != expected_role:
        yield (f"{field}.from", f"{source!r} does not match step {step} of turn {turn}, whose role is "
                                f"{message.get('role')!r}; point `step` at a {expected_role} message or change `from`")
        return
    if not isinstance(snippet, str):
        return
    if not snippet:
        yield f"{field}.snippet", "the snippet is empty; quote the text the item was written from"
        return
    rendering = _safe_render(message, source)
    if rendering is not None and snippet not in rendering:
        yield (f"{field}.snippet", f"not a verbatim substring of the {source} rendering of turn {turn} step {step} "
                                   f"({_preview(rendering)}); copy the text exactly from that rendering")


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _safe_render(message: Mapping[str, Any], source: str) -> str | None:
    """The canonical rendering, or ``None`` when the message is too malformed to render (reported elsewhere)."""
    try:
        rendering = render(message, source)
    except (AttributeError, TypeError, ValueError):
        return None
    return rendering if isinstance(rendering, str) else None


def _preview(text: str, limit: int = 80) -> str:
    return "rendering " + json.dumps(shorten(text, limit), ensure_ascii=False)
