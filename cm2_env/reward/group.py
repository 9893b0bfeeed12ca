"""Group advantages for the G rollouts of one prompt (paper Eq. 5, 7, 8-10), vectorised with numpy.

Contract of :func:`score_group`: given the reward records of one group's rollouts (:mod:`cm2_env.reward.record`,
written by the environment at the end of each episode), return per rollout what it earned -- action rewards
(Eq. 2), turn rewards R_t (Eq. 6), trajectory reward R (Eq. 4), all as recorded -- and its advantages at the
trajectory (Eq. 5), turn (Eq. 7) and step (Eq. 8-10) level. Rewards are never recomputed here: the
environment's :class:`~cm2_env.reward.incremental.TurnRewardState` is the one implementation of Eq. 2.

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
  code dropped such items). With several checklist variants in use, each variant's items get their own
  baselines and an action's step advantage is the mean over the variants.

Closed form used for speed (the tests check it against the literal definitions): with f = first_satisfied[c]
and g = max over dependencies of first_satisfied (0 without dependencies), c is in E_a iff
g + 1 <= a <= min(f, M), and on those actions r~[a][c] equals "c was paid" (Eq. 3), so an item's advantage is
the same at every action where it is eligible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from cm2_env.reward.items import F_NORMS, STD_EPSILON, FNorm, as_items, check_choice

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


#: A group estimator: ``(values, groups, n_groups) -> advantages`` for values labelled with comparison-group ids
#: 0..n_groups-1 (one id for a trajectory-level group, one per turn, one per checklist item). Every level of
#: :func:`score_group` goes through it; ``train.estimators`` registers the trainer's.
GroupEstimator = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def group_means(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Each comparison group's mean value, for values labelled with group ids 0..n_groups-1 (0 for an empty
    group)."""
    count = np.bincount(groups, minlength=n_groups)
    return np.bincount(groups, values, minlength=n_groups) / np.maximum(count, 1)


def group_mean_baseline(values: np.ndarray, groups: np.ndarray, n_groups: int, f_norm: FNorm = "none") -> np.ndarray:
    """(x - mean_g) / F_g for values labelled with group ids 0..n_groups-1 (the core of Eq. 5, 7 and 9): the
    paper's estimator, and :func:`score_group`'s default.

    F_g = 1 ("none") or the group's sample std (ddof 1) + 1e-6 ("std"); a group of one value has std 0.
    """
    advantage = values - group_means(values, groups, n_groups)[groups]
    if f_norm == "std":
        count = np.bincount(groups, minlength=n_groups)
        variance = np.bincount(groups, advantage * advantage, minlength=n_groups) / np.maximum(count - 1, 1)
        advantage = advantage / (np.sqrt(variance) + STD_EPSILON)[groups]
    return advantage


def _estimate(estimator: GroupEstimator, values: np.ndarray, groups: np.ndarray, n_groups: int,
              min_group_count: int) -> np.ndarray:
    """``estimator`` over the labelled values, 0 for a group with fewer than ``max(2, min_group_count)`` values."""
    advantage = np.asarray(estimator(values, groups, n_groups), dtype=float)
    if advantage.shape != values.shape:
        raise ValueError(f"the group estimator returned {advantage.shape[0] if advantage.ndim else 'no'} "
                         f"advantages for {len(values)} values")
    enough = np.bincount(groups, minlength=n_groups) >= max(2, min_group_count)
    return np.where(enough[groups], advantage, 0.0)


def score_group(records: Sequence[Any], *, f_norm: FNorm = "none", min_group_count: int = 0,
                estimator: GroupEstimator | None = None) -> GroupScore:
    """Rewards (as recorded) and trajectory/turn/step advantages (Eq. 5, 7, 8-10) of one group.

    ``records``: one reward record per rollout (:class:`cm2_env.reward.record.RewardRecord`: the environment's
    ``info["reward_record"]``, or :func:`cm2_env.reward.record.replay_histories` of bare verdict histories);
    a record with ``failed`` true needs nothing else. ``f_norm``: "std" | "none", for the default estimator
    (:func:`group_mean_baseline`); ``estimator`` replaces it at every level (:data:`GroupEstimator`). Raises
    ValueError naming the rollout and turn when a record is incomplete or inconsistent (the live rollouts of a
    group must share the reference: the same number of turns and the same checklists).
    """
    check_choice("f_norm", f_norm, F_NORMS)
    if estimator is not None and f_norm != "none":
        raise ValueError("f_norm belongs to the default estimator; with estimator= given, normalise inside it")
    if estimator is None:
        def estimator(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
            return group_mean_baseline(values, groups, n_groups, f_norm)
    group = _Group(records)
    live = group.live
    R = np.array([float(records[i]["R"]) for i in live], dtype=float)
    adv_traj = _estimate(estimator, R, np.zeros(len(live), dtype=np.int64), 1, min_group_count)
    adv_turn = _estimate(estimator, group.turn_rewards, group.pair_turn, group.n_turns, min_group_count)
    adv_step = group.step_advantages(len(live), estimator, min_group_count)
    return _assemble(records, group, R, adv_traj, adv_turn, adv_step)


def _field(record: Any, key: str, i: int) -> Any:
    try:
        return record[key]
    except (KeyError, TypeError):
        raise ValueError(f"rollout {i}: the reward record has no {key!r}; score the environment's "
                         "info['reward_record'], or build records with cm2_env.reward.replay_histories") from None


class _Group:
    """The live rollouts' (rollout, reached turn) pairs and their (pair, checklist variant) rows, as arrays.

    A *slot* is one checklist variant of one reference turn; every row belongs to a slot, and the step
    baselines are per slot. Padded to the widest checklist: W item slots per row.
    """

    def __init__(self, records: Sequence[Any]):
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise ValueError(f"rollout {i}: a reward record is a dict, got {type(record).__name__}")
        self.failed = [bool(record.get("failed")) for record in records]
        self.live = [i for i, f in enumerate(self.failed) if not f]
        references = {int(_field(records[i], "reference_turns", i)) for i in self.live}
        if len(references) > 1:
            raise ValueError(f"the rollouts of one group must share the reference dialogue; their records count "
                             f"{sorted(references)} reference turns")
        self.n_turns = references.pop() if references else 0
        slot_index: dict[tuple[int, int], int] = {}
        slot_items: list[tuple[Any, ...]] = []
        slot_raw: list[Any] = []  # each slot's items as first recorded: equal lists skip the normalisation
        slot_ids: list[list[str]] = []
        slot_id_sets: list[frozenset[str]] = []
        pair_rollout, pair_turn, pair_steps, turn_rewards, action_rewards = [], [], [], [], []
        row_pair, row_slot, row_first, row_paid = [], [], [], []
        for i in self.live:
            record = records[i]
            turns, rewards = _field(record, "turns", i), _field(record, "action_rewards", i)
            totals = _field(record, "turn_rewards", i)
            if len(turns) > self.n_turns:
                raise ValueError(f"rollout {i} reached {len(turns)} turns but the reference has {self.n_turns}")
            if not len(rewards) == len(totals) == len(turns):
                raise ValueError(f"rollout {i}: action_rewards covers {len(rewards)} turns, turn_rewards "
                                 f"{len(totals)}, turns {len(turns)}")
            turn_rewards.extend(totals)
            for t, (turn, turn_action_rewards) in enumerate(zip(turns, rewards)):
                steps = int(turn["steps"])
                if steps < 0 or len(turn_action_rewards) != steps:
                    raise ValueError(f"rollout {i}, turn {t}: {len(turn_action_rewards)} action rewards for "
                                     f"{steps} steps")
                p = len(pair_steps)
                pair_rollout.append(i)
                pair_turn.append(t)
                pair_steps.append(steps)
                action_rewards.extend(turn_action_rewards)
                checklists = turn.get("checklists")
                if not checklists:
                    raise ValueError(f"rollout {i}, turn {t}: the reward record has no 'checklists'; score the "
                                     "environment's info['reward_record'], or cm2_env.reward.replay_histories")
                for k, checklist in enumerate(checklists):
                    slot = slot_index.get((t, k))
                    if slot is None:
                        slot = slot_index[(t, k)] = len(slot_items)
                        slot_items.append(as_items(checklist["items"]))
                        slot_raw.append(checklist["items"])
                        slot_ids.append([item.id for item in slot_items[slot]])
                        slot_id_sets.append(frozenset(slot_ids[slot]))
                    elif checklist["items"] != slot_raw[slot] and as_items(checklist["items"]) != slot_items[slot]:
                        raise ValueError(f"rollout {i}, turn {t}: checklist variant {k} differs from the other "
                                         "rollouts'; the rollouts of one group must share the reference dialogue")
                    try:
                        first, paid = _verdict_row(slot_ids[slot], slot_id_sets[slot], checklist)
                    except ValueError as exc:
                        raise ValueError(f"rollout {i}, turn {t}: {exc}") from None
                    row_pair.append(p)
                    row_slot.append(slot)
                    row_first.append(first)
                    row_paid.append(paid)
        self.pair_rollout = np.array(pair_rollout, dtype=np.int64)
        self.pair_turn = np.array(pair_turn, dtype=np.int64)
        self.pair_steps = np.array(pair_steps, dtype=np.int64)
        self.pair_offsets = np.cumsum(self.pair_steps) - self.pair_steps
        self.turn_rewards = np.array(turn_rewards, dtype=float)
        self.action_rewards = np.array(action_rewards, dtype=float)
        self.n_slots = len(slot_items)
        self.width = max((len(items) for items in slot_items), default=0) or 1
        self.weights, self.depends, self.real = _checklist_arrays(slot_items, self.width)
        self.row_pair = np.array(row_pair, dtype=np.int64)
        self.row_slot = np.array(row_slot, dtype=np.int64)
        self.first = _padded(row_first, self.width)
        paid = _padded(row_paid, self.width)
        self.pays = paid != _NEVER
        self.row_steps = self.pair_steps[self.row_pair]
        self._check_actions(paid)

    def _check_actions(self, paid: np.ndarray) -> None:
        """Every first_satisfied is an action in 0..steps (or never) and every paid item was paid at its first."""
        never = self.first == _NEVER
        bad = (~never & ((self.first < 0) | (self.first > self.row_steps[:, None]))) | (self.pays & (paid != self.first))
        if bad.any():
            r = int(np.argmax(bad.any(axis=1)))
            p = self.row_pair[r]
            raise ValueError(
                f"rollout {self.pair_rollout[p]}, turn {self.pair_turn[p]}: every first_satisfied must be an action "
                f"number in 0..steps ({self.row_steps[r]}) or None, and an item is paid at the action where it was "
                "first satisfied")

    def _sum_by_slot(self, values: np.ndarray) -> np.ndarray:
        """(S, W) sums over the rows of each slot of a (rows, W) array (np.add.at is ~10x slower)."""
        slots = (self.row_slot[:, None] * self.width + np.arange(self.width)).ravel()
        return np.bincount(slots, weights=values.ravel(), minlength=self.n_slots * self.width).reshape(
            self.n_slots, self.width)

    def item_advantages(self, n_live: int, estimator: GroupEstimator, min_group_count: int) -> np.ndarray:
        """(rows, W): each row's item advantages, Eq. 8-9 -- the estimator over each (slot, item)'s G indicators
        "live rollout i earned c in turn t", a rollout that never reached the turn counting 0 (so the paper's
        baseline b_{t,c} is the indicators' mean over all G live rollouts)."""
        position = np.searchsorted(np.array(self.live, dtype=np.int64), self.pair_rollout[self.row_pair])
        cells = (position * self.n_slots + self.row_slot)[:, None] * self.width + np.arange(self.width)
        earned = np.zeros(n_live * self.n_slots * self.width)
        earned[cells] = self.pays
        groups = np.tile(np.arange(self.n_slots * self.width), n_live)
        advantage = _estimate(estimator, earned, groups, self.n_slots * self.width, min_group_count)
        return advantage[cells]

    def step_advantages(self, n_live: int, estimator: GroupEstimator, min_group_count: int) -> np.ndarray:
        """The step advantage of every action of every pair, flat in pair order (Eq. 8-10, variants averaged)."""
        weights = self.weights[self.row_slot]  # w_c per row (0 for padding)
        # g = latest first_satisfied among c's dependencies: 0 without any, _NEVER if one is never satisfied
        latest_dependency = np.where(self.depends[self.row_slot], self.first[:, None, :], 0).max(axis=2, initial=0)
        eligible_from = np.where(self.real[self.row_slot], latest_dependency + 1, _NEVER)  # c in E_a for
        eligible_to = np.minimum(self.first, self.row_steps[:, None])  # eligible_from <= a <= eligible_to
        item_advantage = self.item_advantages(n_live, estimator, min_group_count)  # Eq. 9 on eligible actions
        if min_group_count > 0:
            eligible_count = self._sum_by_slot(eligible_from <= eligible_to)
            weights = weights * (eligible_count >= min_group_count)[self.row_slot]  # drop rarely reached items
        row_offsets = np.cumsum(self.row_steps) - self.row_steps
        row = np.repeat(np.arange(len(self.row_steps)), self.row_steps)
        action = np.arange(len(row)) - row_offsets[row]  # 0-based action of each row-action
        in_e = (eligible_from[row] <= action[:, None] + 1) & (action[:, None] + 1 <= eligible_to[row])  # c in E_a
        numerator = (in_e * (weights * item_advantage)[row]).sum(axis=1)
        denominator = (in_e * weights[row]).sum(axis=1)
        per_row = np.divide(numerator, denominator, out=np.zeros(len(row)), where=denominator > 0)  # Eq. 10
        pair = self.row_pair[row]
        n_variants = np.bincount(self.row_pair, minlength=len(self.pair_steps))
        total = np.bincount(self.pair_offsets[pair] + action, weights=per_row, minlength=int(self.pair_steps.sum()))
        return total / np.repeat(np.maximum(n_variants, 1), self.pair_steps)


def _verdict_row(ids: Sequence[str], id_set: frozenset[str], checklist: Any) -> tuple[list[int], list[int]]:
    """(first_satisfied, paid) aligned with the item ``ids``, _NEVER for never; raises ValueError on unknown ids
    (the action numbers are checked for the whole group at once, in :meth:`_Group._check_actions`)."""
    first, paid = checklist.get("first_satisfied") or {}, checklist.get("paid") or {}
    if not (first.keys() <= id_set and paid.keys() <= id_set):
        unknown = sorted((first.keys() | paid.keys()) - id_set)
        raise ValueError(f"{unknown} are not items of this turn (items: {sorted(id_set)})")
    get, get_paid = first.get, paid.get
    return ([_NEVER if (f := get(c)) is None else f for c in ids],
            [_NEVER if (a := get_paid(c)) is None else a for c in ids])


def _padded(rows: list[list[int]], width: int) -> np.ndarray:
    return np.array([row + [_NEVER] * (width - len(row)) for row in rows], dtype=np.int64).reshape(len(rows), width)


def _checklist_arrays(slots: Sequence[Sequence[Any]], width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slot, padded to ``width``: weights (S, W), dependency matrix (S, W, W) with ``depends[s, c, d]`` =
    "c depends on d", and the mask of real (non-padding) item slots (S, W)."""
    weights, depends = np.zeros((len(slots), width)), np.zeros((len(slots), width, width), dtype=bool)
    real = np.zeros((len(slots), width), dtype=bool)
    for s, items in enumerate(slots):
        index = {item.id: k for k, item in enumerate(items)}
        real[s, : len(items)] = True
        for k, item in enumerate(items):
            weights[s, k] = item.weight
            for d in item.dependence:
                depends[s, k, index[d]] = True
    return weights, depends, real


def _assemble(records, group: _Group, R, adv_traj, adv_turn, adv_step) -> GroupScore:
    """Cut the flat per-pair and per-action arrays back into one :class:`RolloutScore` per rollout."""
    turn_rewards, adv_turn = group.turn_rewards.tolist(), adv_turn.tolist()
    action_rewards, adv_step = group.action_rewards.tolist(), adv_step.tolist()
    bounds = np.concatenate(([0], np.cumsum(group.pair_steps))).tolist()
    first_pair = np.searchsorted(group.pair_rollout, np.arange(len(records) + 1)).tolist()
    scores = [RolloutScore(failed=True) for _ in records]
    for i, r, a in zip(group.live, R.tolist(), adv_traj.tolist()):
        p0, p1 = first_pair[i], first_pair[i + 1]
        scores[i] = RolloutScore(
            failed=False, R=r, adv_traj=a, turn_rewards=turn_rewards[p0:p1], adv_turn=adv_turn[p0:p1],
            action_rewards=[action_rewards[bounds[p]: bounds[p + 1]] for p in range(p0, p1)],
            adv_step=[adv_step[bounds[p]: bounds[p + 1]] for p in range(p0, p1)],
        )
    return GroupScore(scores)
