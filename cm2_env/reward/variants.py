"""Several checklist variants of one turn, combined into one reward per action (to cut judge noise).

Each variant is a separate checklist for the same turn, judged separately. Two aggregations:

- "mean" (default): every action's reward is the mean over variants of that action's reward; the turn reward
  is then the mean of the variants' turn rewards (Eq. 6 per variant, averaged).
- "majority": the variants must have the same item ids. An item pays iff it pays (Eq. 2) in a strict majority
  of the variants, with weight = its mean weight over the variants, at the first action by which a majority
  has paid it. The turn reward is sum_c mean_w_c * 1[majority pays c].

Both keep the sums consistent: the aggregated action rewards add up to the aggregated turn reward, so the
payout modes and the trajectory reward (Eq. 4) work on the aggregate unchanged.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from cm2_env.reward.incremental import TurnRewardState
from cm2_env.reward.items import VARIANT_AGGREGATIONS, Item, VariantAggregation, check_choice


def _majority_needed(n_variants: int) -> int:
    return n_variants // 2 + 1


def _shared_weights(variants: Sequence[Sequence[Item]]) -> dict[str, float]:
    """id -> mean weight over variants; raises ValueError unless every variant has the same ids."""
    ids = {item.id for item in variants[0]}
    for k, items in enumerate(variants[1:], start=1):
        other = {item.id for item in items}
        if other != ids:
            raise ValueError(
                f"majority aggregation needs the same item ids in every variant; variant {k} differs from "
                f"variant 0 by {sorted(ids ^ other)} (use how='mean' for variants with different items)"
            )
    return {c: sum(w.weight for items in variants for w in items if w.id == c) / len(variants) for c in ids}


class VariantTurnRewardState:
    """:class:`~cm2_env.reward.incremental.TurnRewardState` over several variants of one turn, fed one action
    at a time; :meth:`step` returns the aggregated action reward (see the module docstring)."""

    def __init__(self, variants: Sequence[Iterable[Any]], how: VariantAggregation = "mean"):
        check_choice("how", how, VARIANT_AGGREGATIONS)
        if not variants:
            raise ValueError("VariantTurnRewardState needs at least one variant")
        self.how = how
        self.states = [TurnRewardState(items) for items in variants]
        self._weights = _shared_weights([s.items for s in self.states]) if how == "majority" else {}
        self._paid_count = dict.fromkeys(self._weights, 0)
        self._needed = _majority_needed(len(self.states))
        self.action_rewards: list[float] = []

    def step(self, satisfied_now_per_variant: Sequence[Iterable[str]]) -> float:
        """Feed each variant's satisfied ids after the next action (one iterable per variant, in order)."""
        if len(satisfied_now_per_variant) != len(self.states):
            raise ValueError(f"got verdicts for {len(satisfied_now_per_variant)} variants, expected {len(self.states)}")
        rewards = [state.step(now) for state, now in zip(self.states, satisfied_now_per_variant)]
        if self.how == "mean":
            reward = sum(rewards) / len(rewards)
        else:
            reward = 0.0
            for state in self.states:
                for c in state.last_paid:
                    self._paid_count[c] += 1
                    if self._paid_count[c] == self._needed:
                        reward += self._weights[c]
        self.action_rewards.append(reward)
        return reward

    @property
    def turn_reward(self) -> float:
        """The aggregated R_t so far."""
        return float(sum(self.action_rewards))
