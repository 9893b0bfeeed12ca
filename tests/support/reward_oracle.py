"""Literal reference implementations of the reward equations, kept as test oracles.

They read like the paper's equations (Eq. 2, 3, 6 and the payout schedules) and favour clarity over speed. cm2
runs other code: :class:`cm2_env.reward.TurnRewardState` (Eq. 2, action by action, in the environment),
:class:`cm2_env.reward.RewardAssignment` (payouts) and :func:`cm2_env.reward.score_group` (closed-form group
advantages). The tests check that production code agrees with these on hand-worked and random cases.

Notation: a turn's actions are a = 1..M; x_0 is the state before the first action and x_a the state after
action a; ``first_satisfied[c]`` is the action after which item c first became satisfied (None = never), so c
is satisfied in x_a iff ``first_satisfied[c] <= a`` (satisfaction is sticky). Per-action results are lists
indexed ``[a - 1]``; per-item results inside them follow the order of ``items``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from cm2_env.reward.items import Item, as_items, first_satisfied_list
from cm2_env.reward.variants import _majority_needed, _shared_weights

ASSIGNMENT_MODES = ("step", "turn", "trajectory")

FirstSatisfied = Mapping[str, "int | None"] | Sequence["int | None"]


def _satisfied_sets(items: Sequence[Item], first: list[int | None], steps: int) -> list[frozenset[str]]:
    """[x_0, x_1, ..., x_M] as sets of satisfied item ids (sticky by construction of ``first_satisfied``)."""
    return [frozenset(item.id for item, f in zip(items, first) if f is not None and f <= a) for a in range(steps + 1)]


def eligible_sets(items: Iterable[Any], first_satisfied: FirstSatisfied, steps: int) -> list[frozenset[str]]:
    """E_a for a = 1..M (Eq. 10): items whose dependencies are satisfied in x_{a-1} and that are not satisfied
    in x_{a-1} -- the items action a could still earn."""
    items = as_items(items)
    states = _satisfied_sets(items, first_satisfied_list(items, first_satisfied), steps)
    return [
        frozenset(item.id for item in items if item.id not in states[a - 1] and set(item.dependence) <= states[a - 1])
        for a in range(1, steps + 1)
    ]


def step_rewards(items: Iterable[Any], first_satisfied: FirstSatisfied, steps: int) -> list[list[int]]:
    """r[a][c] (Eq. 2): 1 iff every dependency of c is satisfied in x_{a-1}, c is not satisfied in x_{a-1}, and
    c is satisfied in x_a; else 0. An item satisfied in the same action as one of its dependencies never pays,
    and an item pays at most once (at action ``first_satisfied[c]``, if its dependencies were met before)."""
    items = as_items(items)
    states = _satisfied_sets(items, first_satisfied_list(items, first_satisfied), steps)
    return [
        [
            int(set(item.dependence) <= states[a - 1] and item.id not in states[a - 1] and item.id in states[a])
            for item in items
        ]
        for a in range(1, steps + 1)
    ]


def backfilled_rewards(items: Iterable[Any], first_satisfied: FirstSatisfied, steps: int) -> list[list[int]]:
    """r~[a][c] (Eq. 3): 1 iff c is in E_a and c becomes satisfied at some action u >= a; used only for
    step-level advantages, so every action that was in a position to earn c shares the credit."""
    items = as_items(items)
    first = first_satisfied_list(items, first_satisfied)
    eligible = eligible_sets(items, first, steps)
    return [
        [int(item.id in eligible[a - 1] and f is not None and f >= a) for item, f in zip(items, first)]
        for a in range(1, steps + 1)
    ]


def action_rewards(items: Iterable[Any], first_satisfied: FirstSatisfied, steps: int) -> list[float]:
    """Reward of each action a = 1..M: sum_c w_c r[a][c] (the summand of Eq. 6)."""
    items = as_items(items)
    return [sum(item.weight * r for item, r in zip(items, row)) for row in step_rewards(items, first_satisfied, steps)]


def turn_reward(items: Iterable[Any], first_satisfied: FirstSatisfied, steps: int) -> float:
    """R_t (Eq. 6) = sum_a sum_c w_{t,c} r[a][c]; in [0, 1] when the turn's weights sum to 1."""
    return float(sum(action_rewards(items, first_satisfied, steps)))


def payouts(action_rewards_per_turn: Sequence[Sequence[float]], divisor: int, mode: str) -> list[list[float]]:
    """What the environment pays after each action, per reached turn and action (same shape as the input).

    ``divisor`` is L of Eq. 4 (see :func:`cm2_env.reward.items.normaliser`). "step" pays action_reward / L after
    every action; "turn" pays R_t / L after the last action of each turn; "trajectory" pays R after the last
    action of the episode. Every mode sums to R = sum_t R_t / L (up to float rounding); modes differ only in when
    reward arrives. A turn without actions has R_t = 0 and pays nothing.
    """
    assert mode in ASSIGNMENT_MODES, mode
    scale = 1.0 / divisor if divisor else 0.0
    paid = [[0.0] * len(turn) for turn in action_rewards_per_turn]
    if mode == "step":
        return [[r * scale for r in turn] for turn in action_rewards_per_turn]
    if mode == "turn":
        for t, turn in enumerate(action_rewards_per_turn):
            if turn:
                paid[t][-1] = float(sum(turn)) * scale
        return paid
    total = sum(float(sum(turn)) for turn in action_rewards_per_turn) * scale
    last = max((t for t, turn in enumerate(action_rewards_per_turn) if turn), default=None)
    if last is not None:
        paid[last][-1] = total
    return paid


def action_reward(items: Iterable[Any], satisfied_before: Iterable[str], satisfied_after: Iterable[str]) -> float:
    """sum_c w_c r[a][c] (Eq. 2) for one action, from the sets of item ids satisfied in x_{a-1} and in x_a.

    Satisfaction is sticky: an id in ``satisfied_before`` counts as satisfied in x_a even if it is missing from
    ``satisfied_after``. An item pays iff it is newly satisfied and all its dependencies were satisfied in
    x_{a-1} (so an item satisfied in the same action as a dependency does not pay).
    """
    before = set(satisfied_before)
    after = set(satisfied_after) | before
    return float(
        sum(i.weight for i in as_items(items) if i.id in after and i.id not in before and set(i.dependence) <= before)
    )


def variant_action_rewards(
    variants: Sequence[tuple[Iterable[Any], FirstSatisfied]], steps: int, how: str = "mean"
) -> list[float]:
    """Aggregated reward of each action a = 1..M of one turn from several (items, first_satisfied) variants.

    See the module docstring for "mean" and "majority". The turn reward is the sum of the returned list.
    """
    if not variants:
        raise ValueError("variant_action_rewards needs at least one variant")
    normalised = [(as_items(items), first) for items, first in variants]
    if how == "mean":
        per_variant = [action_rewards(items, first, steps) for items, first in normalised]
        return [sum(column) / len(per_variant) for column in zip(*per_variant)] if steps else []
    weights = _shared_weights([items for items, _ in normalised])
    paid_at: dict[str, list[int]] = {c: [] for c in weights}
    for items, first in normalised:
        for a, row in enumerate(step_rewards(items, first, steps), start=1):
            for item, r in zip(items, row):
                if r:
                    paid_at[item.id].append(a)
    needed = _majority_needed(len(normalised))
    rewards = [0.0] * steps
    for c, actions in paid_at.items():
        if len(actions) >= needed:
            rewards[sorted(actions)[needed - 1] - 1] += weights[c]
    return rewards
