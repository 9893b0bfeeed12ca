"""The reward record: what an episode earned and everything the group computation needs, in one JSON object.

The environment writes one at the end of every episode (``info["reward_record"]``) and
:func:`cm2_env.reward.group.score_group` consumes a group of them, so rewards are computed once, by the
environment, and advantages from exactly what it recorded. A record holds per reached turn the number of
actions and, per checklist variant in use, the items (id, weight, dependence), ``first_satisfied`` (item ->
the action after which the judge first found it satisfied; 0 = before the first action; None = never) and
``paid`` (item -> the action that earned it, Eq. 2).

:func:`replay_histories` builds records from bare verdict histories (the input of ``cm2 reward compute``) by
replaying them through :class:`~cm2_env.reward.incremental.TurnRewardState`, the environment's own Eq. 2.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence, TypedDict

from cm2_env.reward.incremental import trajectory_reward
from cm2_env.reward.incremental import TurnRewardState
from cm2_env.reward.items import L_MODES, LMode, as_items, as_turn_history, check_choice, first_satisfied_list, rollout_fields


class ItemRecord(TypedDict):
    """One checklist item as recorded: its id, weight w_c and the ids it depends on (same turn)."""

    id: str
    weight: float
    dependence: list[str]


class ChecklistHistory(TypedDict):
    """One checklist variant of one reached turn: its items and their verdict history."""

    items: list[ItemRecord]
    first_satisfied: dict[str, int | None]
    paid: dict[str, int]


class TurnRecord(TypedDict):
    """One reached turn: M actions and one :class:`ChecklistHistory` per checklist variant in use."""

    steps: int
    checklists: list[ChecklistHistory]


class RewardRecord(TypedDict):
    """A whole episode: ``failed`` (then nothing else counts), the reached turns, what it earned -- R (Eq. 4),
    each reached turn's R_t (Eq. 6) and each action's reward (Eq. 2), variants aggregated -- and how R was
    normalised (``reference_turns``, ``L``)."""

    failed: bool
    turns: list[TurnRecord]
    R: float
    turn_rewards: list[float]
    action_rewards: list[list[float]]
    reference_turns: int
    L: str


def replay_histories(turn_items: Sequence[Iterable[Any]], rollouts: Sequence[Any],
                     L: LMode = "reference") -> list[RewardRecord]:
    """Reward records of rollouts given as bare verdict histories against one checklist per reference turn.

    ``turn_items[t]``: the items of reference turn t (:mod:`cm2_env.reward.items` lists the accepted forms).
    ``rollouts``: dicts ``{"failed", "turns": [{"steps", "first_satisfied"}]}`` or
    :class:`~cm2_env.reward.items.Rollout`. Raises ValueError naming the rollout and turn on inconsistent input
    (more turns than the reference, unknown item ids, first_satisfied outside 0..steps).
    """
    check_choice("L", L, L_MODES)
    turns = [as_items(items) for items in turn_items]
    records: list[RewardRecord] = []
    for i, raw in enumerate(rollouts):
        failed, reached = rollout_fields(raw)
        if not failed and len(reached) > len(turns):
            raise ValueError(f"rollout {i} reached {len(reached)} turns but the reference has {len(turns)}")
        record_turns: list[TurnRecord] = []
        action_rewards: list[list[float]] = []
        for t, raw_turn in enumerate([] if failed else reached):
            try:
                steps, first = as_turn_history(raw_turn)
                state = _replay_turn(turns[t], steps, first)
            except ValueError as exc:
                raise ValueError(f"rollout {i}, turn {t}: {exc}") from None
            record_turns.append({"steps": steps, "checklists": [state.history()]})
            action_rewards.append(state.action_rewards)
        turn_rewards = [float(sum(rewards)) for rewards in action_rewards]
        records.append({
            "failed": failed, "turns": record_turns, "R": trajectory_reward(turn_rewards, len(turns), L),
            "turn_rewards": turn_rewards, "action_rewards": action_rewards, "reference_turns": len(turns), "L": L,
        })
    return records


def _replay_turn(items: Sequence[Any], steps: int,
                 first: Mapping[str, int | None] | Sequence[int | None]) -> TurnRewardState:
    """Feed one turn's history to a fresh TurnRewardState, action by action."""
    first_list = first_satisfied_list(items, first)
    if steps < 0 or any(f is not None and not 0 <= f <= steps for f in first_list):
        raise ValueError(f"steps must be >= 0 and every first_satisfied an action number in 0..steps ({steps}) "
                         "or None")
    state = TurnRewardState(items, already_satisfied=[item.id for item, f in zip(items, first_list) if f == 0])
    for a in range(1, steps + 1):
        state.step([item.id for item, f in zip(items, first_list) if f == a])
    return state
