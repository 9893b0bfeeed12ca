"""Inputs of the reward math: checklist items, one turn's verdict history, one rollout.

The reward functions accept plain data so that :mod:`cm2_env.reward` depends on nothing but numpy:

- an item is a dict ``{"id", "weight", "dependence"}``, a tuple ``(id, weight[, dependence])``, or any object
  with those attributes (e.g. :class:`cm2_env.data.models.ChecklistItem`); ``dependence`` defaults to ``()``;
- a turn's history is ``(steps, first_satisfied)`` where ``steps`` = M, the number of agent actions the rollout
  took in that turn, and ``first_satisfied`` maps item id -> the 1-based action a after which the item was first
  judged satisfied, or ``None`` if never (a missing id means never). It may also be a sequence aligned with the
  turn's items. Satisfaction is sticky, so item c is satisfied in state x_a iff ``first_satisfied[c] <= a``;
  the value 0 means "already satisfied in x_0, before the first action" (such an item never pays);
- a rollout is a dict ``{"failed": bool, "turns": [{"steps", "first_satisfied"}, ...]}`` or a
  :class:`Rollout`; its ``turns`` are the turns it reached, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping, Sequence, get_args

#: How the trajectory reward is normalised (Eq. 4): by the number of reference turns or of turns reached.
LMode = Literal["reference", "reached"]
#: F_norm of Eq. 5, 7, 9: the group's sample standard deviation (+1e-6), or 1.
FNorm = Literal["std", "none"]
#: How several checklist variants of one turn are combined.
VariantAggregation = Literal["mean", "majority"]

L_MODES: tuple[str, ...] = get_args(LMode)
F_NORMS: tuple[str, ...] = get_args(FNorm)
VARIANT_AGGREGATIONS: tuple[str, ...] = get_args(VariantAggregation)

#: Added to the sample standard deviation before dividing (Eq. 5, 7, 9 with F_norm = "std").
STD_EPSILON = 1e-6


@dataclass(frozen=True)
class Item:
    """One checklist item as the reward math sees it: id, weight w_c and dependencies (ids, same turn)."""

    id: str
    weight: float
    dependence: tuple[str, ...] = ()


@dataclass(frozen=True)
class TurnHistory:
    """One reached turn of a rollout: M actions and ``first_satisfied`` (see the module docstring)."""

    steps: int
    first_satisfied: Mapping[str, int | None] | Sequence[int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Rollout:
    """One rollout of a group: the turns it reached, in order, and whether it failed (then it is ignored)."""

    turns: Sequence[TurnHistory | Mapping[str, Any] | tuple] = ()
    failed: bool = False


def as_item(raw: Any) -> Item:
    """An :class:`Item` from a dict, a tuple ``(id, weight[, dependence])`` or an object with the attributes."""
    if isinstance(raw, Item):
        return raw
    if isinstance(raw, Mapping):
        ident, weight, deps = raw["id"], raw["weight"], raw.get("dependence") or ()
    elif isinstance(raw, (tuple, list)):
        ident, weight, deps = raw[0], raw[1], (raw[2] if len(raw) > 2 and raw[2] is not None else ())
    else:
        ident, weight, deps = raw.id, raw.weight, getattr(raw, "dependence", None) or ()
    if isinstance(deps, str):
        raise ValueError(f"item {ident!r}: dependence must be a list of item ids, got the string {deps!r}")
    return Item(str(ident), float(weight), tuple(str(d) for d in deps))


def as_items(raw_items: Iterable[Any]) -> tuple[Item, ...]:
    """The items of one turn, normalised; raises ValueError on duplicate ids or unknown dependencies."""
    items = tuple(as_item(raw) for raw in raw_items)
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate item ids in one turn: {duplicates}; give every item of a turn its own id")
    known = set(ids)
    for item in items:
        unknown = [d for d in item.dependence if d not in known]
        if unknown:
            raise ValueError(
                f"item {item.id!r} depends on {unknown}, which are not items of the same turn; "
                "dependencies must name items of the same turn"
            )
    return items


def as_turn_history(raw: Any) -> tuple[int, Mapping[str, int | None] | Sequence[int | None]]:
    """``(steps, first_satisfied)`` from a :class:`TurnHistory`, a dict or a tuple."""
    if isinstance(raw, TurnHistory):
        return raw.steps, raw.first_satisfied
    if isinstance(raw, Mapping):
        return int(raw["steps"]), raw.get("first_satisfied") or {}
    if isinstance(raw, (tuple, list)):
        return int(raw[0]), raw[1]
    return int(raw.steps), raw.first_satisfied


def rollout_fields(raw: Any) -> tuple[bool, Sequence[Any]]:
    """``(failed, turns)`` of a rollout given as a :class:`Rollout`, a dict or an object with the attributes."""
    if type(raw) is dict or isinstance(raw, Mapping):
        return bool(raw.get("failed", False)), raw.get("turns") or ()
    return bool(getattr(raw, "failed", False)), getattr(raw, "turns", ()) or ()


def first_satisfied_list(
    items: Sequence[Item], first_satisfied: Mapping[str, int | None] | Sequence[int | None]
) -> list[int | None]:
    """``first_satisfied`` aligned with ``items``; raises ValueError for ids that are not items of the turn."""
    if isinstance(first_satisfied, Mapping):
        if len(first_satisfied) and not first_satisfied.keys() <= {item.id for item in items}:
            unknown = sorted(set(first_satisfied) - {item.id for item in items})
            raise ValueError(f"first_satisfied names ids that are not items of this turn: {unknown}")
        return [first_satisfied.get(item.id) for item in items]
    values = list(first_satisfied)
    if len(values) != len(items):
        raise ValueError(f"first_satisfied has {len(values)} entries for {len(items)} items; align them")
    return values


def normaliser(L: LMode, n_reference_turns: int, n_reached_turns: int) -> int:
    """The divisor L of Eq. 4: reference turns ("reference", released code) or turns reached ("reached")."""
    check_choice("L", L, L_MODES)
    return n_reference_turns if L == "reference" else n_reached_turns


def choice_problem(value: Any, allowed: Sequence[str]) -> str | None:
    """Why ``value`` is not one of ``allowed`` (``"must be one of a, b, got 'x'"``), or None when it is. The one
    wording of a bad choice: :func:`check_choice` raises it, config and file checkers collect it."""
    if value in allowed:
        return None
    return f"must be one of {', '.join(allowed)}, got {value!r}"


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is one of ``allowed``."""
    problem = choice_problem(value, allowed)
    if problem:
        raise ValueError(f"{name} {problem}")
