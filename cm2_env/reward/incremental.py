"""Rewards as an episode runs: Eq. 2 one action at a time, R (Eq. 4), and when the environment pays it.

The environment creates one :class:`TurnRewardState` per turn (per checklist variant), and after each agent
action calls :meth:`TurnRewardState.step` with the ids the judge now considers satisfied. The state applies
sticky satisfaction, returns the action's reward sum_c w_c r[a][c] and records ``first_satisfied``, which is
the history the group functions (:mod:`cm2_env.reward.group`) take. A call costs a few microseconds.

This is the one implementation of Eq. 2 that cm2 runs: the environment pays from it, and
:func:`cm2_env.reward.record.replay_histories` replays recorded verdict histories through it.

A :class:`RewardAssignment` is composed into the environment (``CM2ToolUseEnv(reward_assignment=...)``) the way a
rubric is composed into a verifier: the environment computes each action's reward and asks the assignment what
to pay now. Every assignment pays R in total over an episode -- the last action of an episode always pays
``R - (everything paid before)`` -- so assignments differ only in *when* reward arrives. The strings ``"step"``,
``"turn"`` and ``"trajectory"`` name the built-in ones; subclass :class:`RewardAssignment` and override
:meth:`RewardAssignment.interim` for another schedule.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Sequence

from cm2_env.reward.items import LMode, as_items, normaliser


class TurnRewardState:
    """Sticky verdicts of one turn, fed one action at a time (Eq. 2).

    Attributes: ``actions`` (M so far), ``satisfied`` (ids satisfied in x_M), ``first_satisfied`` (id -> action
    a or None; 0 for ids satisfied before the first action), ``paid`` (id -> the action that earned it),
    ``turn_reward`` (R_t so far, Eq. 6), ``action_rewards`` (one per action so far) and ``last_paid`` (ids that
    the latest action earned). ``already_satisfied``: ids satisfied in x_0, before the first action (they never
    pay, and count as met dependencies from the start).
    """

    __slots__ = (
        "items", "_spec", "_rank", "actions", "satisfied", "first_satisfied", "paid", "turn_reward", "action_rewards",
        "last_paid",
    )

    def __init__(self, items: Iterable[Any], already_satisfied: Iterable[str] = ()):
        self.items = as_items(items)
        # id -> (weight, dependencies as a frozenset): one dict lookup per newly satisfied item in step()
        self._spec = {item.id: (item.weight, frozenset(item.dependence)) for item in self.items}
        self._rank = {item.id: k for k, item in enumerate(self.items)}
        self.actions = 0
        self.satisfied: set[str] = set()
        self.first_satisfied: dict[str, int | None] = {item.id: None for item in self.items}
        self.paid: dict[str, int] = {}
        for c in already_satisfied:
            if c not in self._spec:
                raise ValueError(f"{c!r} is not an item of this turn (items: {sorted(self._spec)})")
            self.satisfied.add(c)
            self.first_satisfied[c] = 0
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
                self.paid[c] = self.actions
            self.first_satisfied[c] = self.actions
        before.update(newly)
        self.turn_reward += reward
        self.action_rewards.append(reward)
        self.last_paid = frozenset(paid)
        return reward

    def history(self) -> dict[str, Any]:
        """This turn's checklist and verdict history as a reward record holds it (:mod:`cm2_env.reward.record`):
        ``items`` (id, weight, dependence), ``first_satisfied`` and ``paid``."""
        return {
            "items": [{"id": i.id, "weight": i.weight, "dependence": list(i.dependence)} for i in self.items],
            "first_satisfied": dict(self.first_satisfied),
            "paid": dict(self.paid),
        }


def trajectory_reward(turn_rewards: Sequence[float], n_reference_turns: int, L: LMode = "reference") -> float:
    """R (Eq. 4) = (sum_t R_t) / L over the turns the rollout reached.

    ``L="reference"`` divides by the number of reference turns (an episode that ended early is penalised, as in
    the released code); ``L="reached"`` by the number of turns reached. R = 0 when the divisor is 0.
    """
    divisor = normaliser(L, n_reference_turns, len(turn_rewards))
    return float(sum(turn_rewards)) / divisor if divisor else 0.0


class RewardAssignment:
    """When reward is paid. The base class pays nothing before the end of an episode (``"trajectory"``)."""

    name: ClassVar[str] = "trajectory"

    def interim(self, action_reward: float, turn_reward: float, turn_ended: bool, divisor: int) -> float:
        """What to pay after an action that does not end the episode.

        ``action_reward``: the action's sum_c w_c r[a][c] (Eq. 2); ``turn_reward``: R_t of the current turn so
        far (Eq. 6); ``turn_ended``: the action ended its turn; ``divisor``: L of Eq. 4 over the turns reached so
        far (0 means pay nothing). The environment pays the remainder of R at the last action.
        """
        return 0.0

    def payment(self, action_reward: float, turn_reward: float, *, turn_ended: bool, episode_ended: bool,
                divisor: int, R: float, paid: float) -> float:
        """The payment for one action: the remainder ``R - paid`` at the end of an episode, else :meth:`interim`."""
        if episode_ended:
            return R - paid
        return self.interim(action_reward, turn_reward, turn_ended, divisor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class StepAssignment(RewardAssignment):
    """Pays each action's reward / L right after the action (dense reward)."""

    name = "step"

    def interim(self, action_reward: float, turn_reward: float, turn_ended: bool, divisor: int) -> float:
        return action_reward / divisor if divisor else 0.0


class TurnAssignment(RewardAssignment):
    """Pays R_t / L after the last action of each turn."""

    name = "turn"

    def interim(self, action_reward: float, turn_reward: float, turn_ended: bool, divisor: int) -> float:
        return turn_reward / divisor if turn_ended and divisor else 0.0


#: The built-in assignments by name; ``reward_assignment("step")`` is shorthand for ``StepAssignment()``.
ASSIGNMENTS: dict[str, type[RewardAssignment]] = {
    cls.name: cls for cls in (StepAssignment, TurnAssignment, RewardAssignment)
}


def reward_assignment(spec: str | RewardAssignment) -> RewardAssignment:
    """A :class:`RewardAssignment` from itself or from one of the names in :data:`ASSIGNMENTS`."""
    if isinstance(spec, RewardAssignment):
        return spec
    if isinstance(spec, str) and spec in ASSIGNMENTS:
        return ASSIGNMENTS[spec]()
    raise ValueError(
        f"reward_assignment must be one of {tuple(ASSIGNMENTS)} or a cm2_env.reward.RewardAssignment, got {spec!r}"
    )
