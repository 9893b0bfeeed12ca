"""Checklist reward math of CM2 (paper Eq. 1-10): pure code over verdict histories, no LLM, env or torch.

A turn's verdict history is ``first_satisfied``: item id -> the 1-based action after which the item was first
judged satisfied (None = never); satisfaction is sticky. One implementation of each equation:

- :mod:`~cm2_env.reward.incremental`: Eq. 2 one action at a time (:class:`TurnRewardState`), the trajectory
  reward R (Eq. 4) and :class:`RewardAssignment`, when the environment pays ("step", "turn", "trajectory");
- :mod:`~cm2_env.reward.variants`: several checklist variants of a turn (mean, or majority per item);
- :mod:`~cm2_env.reward.record`: the reward record an episode ends with, and :func:`replay_histories`, which
  builds records from bare verdict histories through the same Eq. 2;
- :mod:`~cm2_env.reward.group`: a group of records at once -- trajectory (Eq. 5), turn (Eq. 7) and step
  (Eq. 8-10) advantages, failed rollouts excluded;
- :mod:`~cm2_env.reward.segments`: advantages laid onto an episode's actions, for the trainer.

docs/reward.md maps the paper's symbols to these names.
"""

from cm2_env.reward.group import GroupScore, RolloutScore, score_group
from cm2_env.reward.incremental import (
    ASSIGNMENTS,
    RewardAssignment,
    StepAssignment,
    TurnAssignment,
    TurnRewardState,
    reward_assignment,
    trajectory_reward,
)
from cm2_env.reward.items import (
    F_NORMS,
    L_MODES,
    STD_EPSILON,
    VARIANT_AGGREGATIONS,
    FNorm,
    Item,
    LMode,
    Rollout,
    TurnHistory,
    VariantAggregation,
    as_item,
    as_items,
    normaliser,
)
from cm2_env.reward.record import ChecklistHistory, ItemRecord, RewardRecord, TurnRecord, replay_histories
from cm2_env.reward.segments import ADVANTAGE_LEVELS, AdvantageLevel, advantages_per_action
from cm2_env.reward.variants import VariantTurnRewardState

#: The names of the built-in reward assignments.
ASSIGNMENT_MODES: tuple[str, ...] = tuple(ASSIGNMENTS)

__all__ = [
    "ADVANTAGE_LEVELS", "ASSIGNMENTS", "ASSIGNMENT_MODES", "F_NORMS", "L_MODES", "STD_EPSILON", "VARIANT_AGGREGATIONS",
    "AdvantageLevel", "ChecklistHistory", "FNorm", "GroupScore", "Item", "ItemRecord", "LMode", "RewardAssignment",
    "RewardRecord", "Rollout", "RolloutScore", "StepAssignment", "TurnAssignment", "TurnHistory", "TurnRecord",
    "TurnRewardState", "VariantAggregation", "VariantTurnRewardState",
    "advantages_per_action", "as_item", "as_items", "normaliser", "replay_histories", "reward_assignment",
    "score_group", "trajectory_reward",
]
