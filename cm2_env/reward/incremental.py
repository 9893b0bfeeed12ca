"""Eq. 2 one action at a time, for the environment, which learns the judge's verdicts action by action.

The environment creates one :class:`TurnRewardState` per turn (per checklist variant), and after each agent
action calls :meth:`TurnRewardState.step` with the ids the judge now considers satisfied. The state applies
sticky satisfaction, returns the action's reward sum_c w_c r[a][c] and records ``first_satisfied``, which is
exactly the history the group functions (:mod:`cm2_env.reward.group`) take. A call costs a few microseconds.
"""

from __future__ import annotations

from typing import Any, Iterable

from cm2_env.reward.items import as_items


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


class TurnRewardState:
    """Sticky verdicts of one turn, fed one action at a time (Eq. 2).

    Attributes: ``actions`` (M so far), ``satisfied`` (ids satisfied in x_M), ``first_satisfied`` (id -> action
    a or None, the input of :func:`cm2_env.reward.group.score_group`), ``turn_reward`` (R_t so far, Eq. 6),
    ``action_rewards`` (one per action so far) and ``last_paid`` (ids that the latest action earned).
    """

    __slots__ = (
        "items", "_spec", "_rank", "actions", "satisfied", "first_satisfied", "turn_reward", "action_rewards", "last_paid",
    )

    def __init__(self, items: Iterable[Any]):
        self.items = as_items(items)
        # id -> (weight, dependencies as a frozenset): one dict lookup per newly satisfied item in step()
        self._spec = {item.id: (item.weight, frozenset(item.dependence)) for item in self.items}
        self._rank = {item.id: k for k, item in enumerate(self.items)}
        self.actions = 0
        self.satisfied: set[str] = set()
        self.first_satisfied: dict[str, int | None] = {item.id: None for item in self.items}
        self.turn_reward = 0.0
        self.action_rewards: list[float] = []
        self.last_paid: frozenset[str] = frozenset()

    def step(self, satisfied_now: Iterable[str]) -> float:
        """Record the verdicts after the next action and return its reward sum_c w_c r[a][c].

        ``satisfied_now``: ids the judge considers satisfied after this action; ids satisfied earlier may be
        included or left out (sticky). Raises ValueError for an id that is not an item of this turn.
        """
        before = self.satisfied
        newly = set(satisfied_now) - before
        if not newly <= self._spec.keys():
            raise ValueError(f"{sorted(newly - self._spec.keys())} are not items of this turn (items: {sorted(self._spec)})")
        self.actions += 1
        reward = 0.0
        paid = []
        # item order, so that the float sum does not depend on set iteration order
        for c in sorted(newly, key=self._rank.__getitem__) if len(newly) > 1 else newly:
            weight, deps = self._spec[c]
            if deps <= before:  # dependencies satisfied in x_{a-1}, i.e. before this action's verdicts
                reward += weight
                paid.append(c)
            self.first_satisfied[c] = self.actions
        before.update(newly)
        self.turn_reward += reward
        self.action_rewards.append(reward)
        self.last_paid = frozenset(paid)
        return reward

    @property
    def pending(self) -> list[str]:
        """Ids not yet satisfied, in item order: the only verdicts that can still change."""
        return [item.id for item in self.items if item.id not in self.satisfied]

    @property
    def eligible(self) -> list[str]:
        """E_{a+1} for the next action: ids not yet satisfied whose dependencies are all satisfied."""
        return [c for c, (_, deps) in self._spec.items() if c not in self.satisfied and deps <= self.satisfied]
