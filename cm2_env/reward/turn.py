"""One turn's rewards, written literally from the paper's equations (Eq. 2, 3, 6), and Eq. 4 over turns.

Notation: a turn's actions are a = 1..M; x_0 is the state before the first action and x_a the state after
action a; ``first_satisfied[c]`` is the action after which item c first became satisfied (None = never), so c
is satisfied in x_a iff ``first_satisfied[c] <= a`` (satisfaction is sticky). Per-action results are lists
indexed ``[a - 1]``; per-item results inside them follow the order of ``items``.

These functions favour reading like the equations over speed; :func:`cm2_env.reward.group.score_group` computes
the same quantities for a whole group in closed form with numpy (and the tests check the two agree).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from cm2_env.reward.items import (
    ASSIGNMENT_MODES,
    AssignmentMode,
    Item,
    LMode,
    as_items,
    check_choice,
    first_satisfied_list,
    normaliser,
)

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


def trajectory_reward(turn_rewards: Sequence[float], n_reference_turns: int, L: LMode = "reference") -> float:
    """R (Eq. 4) = (sum_t R_t) / L over the turns the rollout reached.

    ``L="reference"`` divides by the number of reference turns (an episode that ended early is penalised, as in
    the released code); ``L="reached"`` by the number of turns reached. R = 0 when the divisor is 0.
    """
    divisor = normaliser(L, n_reference_turns, len(turn_rewards))
    return float(sum(turn_rewards)) / divisor if divisor else 0.0


def payouts(action_rewards_per_turn: Sequence[Sequence[float]], divisor: int, mode: AssignmentMode) -> list[list[float]]:
    """What the environment pays after each action, per reached turn and action (same shape as the input).

    ``divisor`` is L of Eq. 4 (see :func:`cm2_env.reward.items.normaliser`). "step" pays action_reward / L after
    every action; "turn" pays R_t / L after the last action of each turn; "trajectory" pays R after the last
    action of the episode. Every mode sums to R = sum_t R_t / L (up to float rounding); modes differ only in when
    reward arrives. A turn without actions has R_t = 0 and pays nothing.
    """
    check_choice("mode", mode, ASSIGNMENT_MODES)
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
