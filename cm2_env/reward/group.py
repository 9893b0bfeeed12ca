"""Rewards and group advantages for the G rollouts of one prompt (paper Eq. 2-10), vectorised with numpy.

Contract of :func:`score_group`: given the reference turns' checklist items and the verdict histories of the
rollouts of one group, return per rollout its action rewards (Eq. 2), turn rewards R_t (Eq. 6), trajectory
reward R (Eq. 4) and its advantages at the trajectory (Eq. 5), turn (Eq. 7) and step (Eq. 8-10) level.

Group statistics ("live" = not failed):

- failed rollouts are excluded from every statistic and get ``None`` everywhere;
- F_norm "none": A = x - mean; "std": A = (x - mean) / (s + 1e-6), s the sample standard deviation (ddof 1);
- an advantage is 0 when fewer than ``max(2, min_group_count)`` values enter its statistic (the released code
  used "more than 4", i.e. ``min_group_count=5``; the default 0 switches that rule off);
- trajectory: x = R over the live rollouts;
- turn t: x = R_t over the live rollouts that reached turn t;
- step: b_{t,c} = (1/G) sum_i 1[live rollout i earned c in turn t] (a rollout that never reached t counts 0),
  G = number of live rollouts; item advantage A[a][c] = (r~[a][c] - b_{t,c}) / F with F = 1 ("none") or the
  sample std of those G indicators + 1e-6 ("std"); step advantage of action a =
  sum_{c in E_a} w_c A[a][c] / sum_{c in E_a} w_c, or 0 when that weight is 0 (E_a empty). With
  ``min_group_count`` set, an item eligible in fewer live rollouts than that is left out of E_a (the released
  code dropped such items).

Closed form used for speed (equivalent to the literal definitions in :mod:`cm2_env.reward.turn`): with
f = first_satisfied[c] and g = max over dependencies of first_satisfied (0 without dependencies), item c pays
iff f is not None and g < f, at action f; c is in E_a iff g + 1 <= a <= min(f, M); and on those actions
r~[a][c] equals "c pays", so an item's advantage is the same at every action where it is eligible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from cm2_env.reward.items import (
    F_NORMS,
    L_MODES,
    STD_EPSILON,
    FNorm,
    LMode,
    as_items,
    as_turn_history,
    check_choice,
    first_satisfied_list,
    rollout_fields,
)

#: Stands for "never satisfied": larger than any action number, small enough that +1 cannot overflow.
_NEVER = np.iinfo(np.int64).max // 4


@dataclass(frozen=True)
class RolloutScore:
    """One rollout's rewards and advantages; every field but ``failed`` is None for a failed rollout.

    ``turn_rewards``, ``adv_turn``: one per reached turn. ``action_rewards``, ``adv_step``: per reached turn, one
    per action. ``R`` is Eq. 4, ``adv_traj`` Eq. 5.
    """

    failed: bool
    R: float | None = None
    turn_rewards: list[float] | None = None
    action_rewards: list[list[float]] | None = None
    adv_traj: float | None = None
    adv_turn: list[float] | None = None
    adv_step: list[list[float]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "failed": self.failed, "R": self.R, "turn_rewards": self.turn_rewards,
            "action_rewards": self.action_rewards, "adv_traj": self.adv_traj, "adv_turn": self.adv_turn,
            "adv_step": self.adv_step,
        }


@dataclass(frozen=True)
class GroupScore:
    """The scores of a group's rollouts, in input order."""

    rollouts: list[RolloutScore]

    def to_json(self) -> dict[str, Any]:
        return {"rollouts": [r.to_json() for r in self.rollouts]}


def group_normalise(
    values: np.ndarray, groups: np.ndarray, n_groups: int, f_norm: FNorm, min_group_count: int = 0
) -> np.ndarray:
    """(x - mean_g) / F_g for values labelled with group ids 0..n_groups-1 (the core of Eq. 5 and 7).

    F_g = 1 ("none") or the group's sample std (ddof 1) + 1e-6 ("std"). Values of a group with fewer than
    ``max(2, min_group_count)`` members get 0.
    """
    count = np.bincount(groups, minlength=n_groups)
    mean = np.bincount(groups, values, minlength=n_groups) / np.maximum(count, 1)
    advantage = values - mean[groups]
    if f_norm == "std":
        variance = np.bincount(groups, advantage * advantage, minlength=n_groups) / np.maximum(count - 1, 1)
        advantage = advantage / (np.sqrt(variance) + STD_EPSILON)[groups]
    enough = count >= max(2, min_group_count)
    return np.where(enough[groups], advantage, 0.0)


def trajectory_advantages(
    rewards: Sequence[float | None], f_norm: FNorm = "none", min_group_count: int = 0
) -> list[float | None]:
    """A_i (Eq. 5) = (R_i - mean R) / F_norm over the live rollouts; ``None`` marks (and stays) a failed one."""
    check_choice("f_norm", f_norm, F_NORMS)
    live = [i for i, r in enumerate(rewards) if r is not None]
    values = np.array([rewards[i] for i in live], dtype=float)
    advantages = group_normalise(values, np.zeros(len(live), dtype=np.int64), 1, f_norm, min_group_count).tolist()
    out: list[float | None] = [None] * len(rewards)
    for i, a in zip(live, advantages):
        out[i] = a
    return out


def turn_advantages(
    turn_rewards: Sequence[Sequence[float] | None], f_norm: FNorm = "none", min_group_count: int = 0
) -> list[list[float] | None]:
    """A_{i,t} (Eq. 7) = (R_{i,t} - mean R_t) / F_norm over the live rollouts that reached turn t.

    ``turn_rewards[i]`` lists R_t for the turns rollout i reached, or is None for a failed rollout.
    """
    check_choice("f_norm", f_norm, F_NORMS)
    flat = [(t, r) for rewards in turn_rewards if rewards is not None for t, r in enumerate(rewards)]
    turns = np.array([t for t, _ in flat], dtype=np.int64)
    values = np.array([r for _, r in flat], dtype=float)
    n_turns = int(turns.max()) + 1 if len(turns) else 0
    advantages = iter(group_normalise(values, turns, n_turns, f_norm, min_group_count).tolist())
    return [None if rewards is None else [next(advantages) for _ in rewards] for rewards in turn_rewards]


def step_advantages(
    turn_items: Sequence[Iterable[Any]], rollouts: Sequence[Any], f_norm: FNorm = "none", min_group_count: int = 0
) -> list[list[list[float]] | None]:
    """Step-level advantages (Eq. 8-10) per rollout, per reached turn, per action; None for failed rollouts."""
    return [r.adv_step for r in score_group(turn_items, rollouts, f_norm=f_norm, min_group_count=min_group_count).rollouts]


def score_group(
    turn_items: Sequence[Iterable[Any]],
    rollouts: Sequence[Any],
    *,
    L: LMode = "reference",
    f_norm: FNorm = "none",
    min_group_count: int = 0,
) -> GroupScore:
    """Rewards (Eq. 2, 4, 6) and trajectory/turn/step advantages (Eq. 5, 7, 8-10) of one group.

    ``turn_items[t]``: the items of reference turn t (see :mod:`cm2_env.reward.items` for accepted forms).
    ``rollouts``: dicts ``{"failed", "turns": [{"steps", "first_satisfied"}]}`` or :class:`~cm2_env.reward.items.Rollout`.
    ``L``: "reference" | "reached" (Eq. 4). ``f_norm``: "std" | "none". Raises ValueError on inconsistent input
    (more turns than the reference, unknown item ids, first_satisfied outside 0..steps).
    """
    check_choice("L", L, L_MODES)
    check_choice("f_norm", f_norm, F_NORMS)
    turns = [as_items(items) for items in turn_items]
    n_turns = len(turns)
    weights, depends, real = _checklist_arrays(turns)
    failed, pair_rollout, pair_turn, steps, rows = _verdict_rows(turns, rollouts, weights.shape[1])
    live = [i for i, f in enumerate(failed) if not f]
    pairs = _Pairs(weights, depends, real, rows, pair_rollout, pair_turn, steps)
    action_rewards, turn_rewards = pairs.action_rewards(), pairs.turn_rewards()
    reached = np.bincount(pairs.rollout, minlength=len(rollouts))
    divisor = np.full(len(rollouts), n_turns) if L == "reference" else reached
    totals = np.bincount(pairs.rollout, turn_rewards, minlength=len(rollouts))
    R = np.divide(totals, divisor, out=np.zeros(len(rollouts)), where=divisor > 0)[live]

    adv_traj = group_normalise(R, np.zeros(len(live), dtype=np.int64), 1, f_norm, min_group_count)
    adv_turn = group_normalise(turn_rewards, pairs.turn, n_turns, f_norm, min_group_count)
    adv_step = pairs.step_advantages(len(live), n_turns, f_norm, min_group_count)
    return _assemble(failed, live, pairs, R, adv_traj, turn_rewards, adv_turn, action_rewards, adv_step)


def _checklist_arrays(turns: Sequence[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per reference turn, padded to the widest turn: weights (T, W), dependency matrix (T, W, W) with
    ``depends[t, c, d]`` = "c depends on d", and the mask of real (non-padding) item slots (T, W)."""
    n_turns, width = len(turns), max((len(items) for items in turns), default=0) or 1
    weights, depends = np.zeros((n_turns, width)), np.zeros((n_turns, width, width), dtype=bool)
    real = np.zeros((n_turns, width), dtype=bool)
    for t, items in enumerate(turns):
        index = {item.id: k for k, item in enumerate(items)}
        real[t, : len(items)] = True
        for k, item in enumerate(items):
            weights[t, k] = item.weight
            for d in item.dependence:
                depends[t, k, index[d]] = True
    return weights, depends, real


def _verdict_rows(turns: Sequence[Sequence[Any]], rollouts: Sequence[Any], width: int):
    """``first_satisfied`` of every (live rollout, reached turn) pair as a padded row (None -> _NEVER).

    Returns (failed flag per rollout, rollout per pair, turn per pair, steps per pair, rows).
    """
    ids = [[item.id for item in items] for items in turns]
    id_sets = [frozenset(turn_ids) for turn_ids in ids]
    failed, pair_rollout, pair_turn, steps, rows = [], [], [], [], []
    for i, raw in enumerate(rollouts):
        is_failed, reached = rollout_fields(raw)
        failed.append(is_failed)
        if is_failed:
            continue
        if len(reached) > len(turns):
            raise ValueError(f"rollout {i} reached {len(reached)} turns but the reference has {len(turns)}")
        for t, raw_turn in enumerate(reached):
            # plain dicts take a fast path: isinstance checks against typing ABCs would dominate the time
            if type(raw_turn) is dict:
                m, first = raw_turn["steps"], raw_turn.get("first_satisfied") or {}
            else:
                m, first = as_turn_history(raw_turn)
            if type(first) is dict and first.keys() <= id_sets[t]:
                get = first.get
                row = [_NEVER if (f := get(c)) is None else f for c in ids[t]]
            else:
                try:
                    row = [_NEVER if f is None else f for f in first_satisfied_list(turns[t], first)]
                except ValueError as exc:
                    raise ValueError(f"rollout {i}, turn {t}: {exc}") from None
            rows.append(row + [_NEVER] * (width - len(row)))
            pair_rollout.append(i)
            pair_turn.append(t)
            steps.append(m)
    return failed, pair_rollout, pair_turn, steps, rows


def _assemble(failed, live, pairs, R, adv_traj, turn_rewards, adv_turn, action_rewards, adv_step) -> GroupScore:
    """Cut the flat per-pair and per-action arrays back into one :class:`RolloutScore` per rollout."""
    turn_rewards, adv_turn = turn_rewards.tolist(), adv_turn.tolist()
    action_rewards, adv_step = action_rewards.tolist(), adv_step.tolist()
    bounds = np.concatenate(([0], np.cumsum(pairs.steps))).tolist()
    first_pair = np.searchsorted(pairs.rollout, np.arange(len(failed) + 1)).tolist()
    scores = [RolloutScore(failed=True) for _ in failed]
    for i, r, a in zip(live, R.tolist(), adv_traj.tolist()):
        p0, p1 = first_pair[i], first_pair[i + 1]
        scores[i] = RolloutScore(
            failed=False, R=r, adv_traj=a, turn_rewards=turn_rewards[p0:p1], adv_turn=adv_turn[p0:p1],
            action_rewards=[action_rewards[bounds[p]: bounds[p + 1]] for p in range(p0, p1)],
            adv_step=[adv_step[bounds[p]: bounds[p + 1]] for p in range(p0, p1)],
        )
    return GroupScore(scores)


class _Pairs:
    """The (live rollout, reached turn) pairs as padded arrays: P pairs x W item slots, in rollout order."""

    def __init__(self, weights, depends, real, rows, pair_rollout, pair_turn, steps):
        width = weights.shape[1]
        self.rollout = np.array(pair_rollout, dtype=np.int64)
        self.turn = np.array(pair_turn, dtype=np.int64)
        self.steps = np.array(steps, dtype=np.int64)
        self.first = np.array(rows, dtype=np.int64).reshape(len(rows), width)
        self.weights = weights[self.turn]  # w_c per pair (0 for padding)
        bad = (self.first != _NEVER) & ((self.first < 0) | (self.first > self.steps[:, None]))
        if bad.any() or (self.steps < 0).any():
            p = int(np.argmax(bad.any(axis=1) | (self.steps < 0)))
            raise ValueError(
                f"rollout {self.rollout[p]}, turn {self.turn[p]}: steps must be >= 0 and every first_satisfied "
                f"an action number in 0..steps ({self.steps[p]}) or None"
            )
        # g = latest first_satisfied among c's dependencies: 0 without any, _NEVER if one is never satisfied
        latest_dependency = np.where(depends[self.turn], self.first[:, None, :], 0).max(axis=2, initial=0)
        self.pays = (self.first != _NEVER) & (latest_dependency < self.first)
        # c is in E_a for eligible_from <= a <= eligible_to; padding slots are never eligible
        self.eligible_from = np.where(real[self.turn], latest_dependency + 1, _NEVER)
        self.eligible_to = np.minimum(self.first, self.steps[:, None])
        self.offsets = np.cumsum(self.steps) - self.steps  # index of each pair's first action in flat arrays

    def action_rewards(self) -> np.ndarray:
        """sum_c w_c r[a][c] for every action of every pair, flat in pair order (Eq. 2)."""
        paid_action = (self.offsets[:, None] + self.first - 1)[self.pays]
        return np.bincount(paid_action, weights=self.weights[self.pays], minlength=int(self.steps.sum()))

    def turn_rewards(self) -> np.ndarray:
        """R_t of every pair (Eq. 6)."""
        return (self.weights * self.pays).sum(axis=1)

    def _sum_by_turn(self, values: np.ndarray, n_turns: int) -> np.ndarray:
        """(T, W) sums over the pairs of each turn of a (P, W) array (np.add.at is ~10x slower)."""
        width = values.shape[1]
        slots = (self.turn[:, None] * width + np.arange(width)).ravel()
        return np.bincount(slots, weights=values.ravel(), minlength=n_turns * width).reshape(n_turns, width)

    def step_advantages(self, n_live: int, n_turns: int, f_norm: FNorm, min_group_count: int) -> np.ndarray:
        """The step advantage of every action of every pair, flat in pair order (Eq. 8-10)."""
        paid_count = self._sum_by_turn(self.pays, n_turns)
        baseline = paid_count / max(n_live, 1)  # b_{t,c}, Eq. 8: never-reached turns count as "not earned"
        if f_norm == "std" and n_live >= 2:
            # sample std of G binary indicators with mean b: sqrt(G b (1 - b) / (G - 1))
            scale = np.sqrt(n_live * baseline * (1 - baseline) / (n_live - 1)) + STD_EPSILON
        else:
            scale = np.ones_like(baseline)
        item_advantage = (self.pays - baseline[self.turn]) / scale[self.turn]  # Eq. 9 on c's eligible actions
        if n_live < max(2, min_group_count):
            item_advantage[:] = 0.0
        weights = self.weights
        if min_group_count > 0:
            eligible_count = self._sum_by_turn(self.eligible_from <= self.eligible_to, n_turns)
            weights = weights * (eligible_count >= min_group_count)[self.turn]  # drop rarely reached items
        pair = np.repeat(np.arange(len(self.steps)), self.steps)
        action = (np.arange(len(pair)) - self.offsets[pair] + 1)[:, None]
        in_e = (self.eligible_from[pair] <= action) & (action <= self.eligible_to[pair])  # c in E_a
        numerator = (in_e * (weights * item_advantage)[pair]).sum(axis=1)
        denominator = (in_e * weights[pair]).sum(axis=1)
        return np.divide(numerator, denominator, out=np.zeros(len(pair)), where=denominator > 0)  # Eq. 10
