"""Checklist reward math of CM2 (paper Eq. 1-10): pure functions over verdict histories, no LLM, env or torch.

A turn's verdict history is ``first_satisfied``: item id -> the 1-based action after which the item was first
judged satisfied (None = never); satisfaction is sticky. From it:

- :mod:`~cm2_env.reward.turn`: step rewards r[a][c] (Eq. 2), eligible sets E_a, backfill r~ (Eq. 3), action
  rewards, turn reward R_t (Eq. 6), trajectory reward R (Eq. 4), payouts per assignment mode;
- :mod:`~cm2_env.reward.incremental`: the same rewards one action at a time, for the environment;
- :mod:`~cm2_env.reward.variants`: several checklist variants of a turn (mean, or majority per item);
- :mod:`~cm2_env.reward.group`: a whole group at once -- rewards and trajectory (Eq. 5), turn (Eq. 7) and step
  (Eq. 8-10) advantages, failed rollouts excluded;
- :mod:`~cm2_env.reward.segments`: advantages laid onto an episode's actions, for the trainer.

docs/reward.md maps the paper's symbols to these arguments.
"""

from cm2_env.reward.group import (
    GroupScore,
    RolloutScore,
    group_normalise,
    score_group,
    step_advantages,
    trajectory_advantages,
    turn_advantages,
)
from cm2_env.reward.incremental import TurnRewardState, action_reward
from cm2_env.reward.items import (
    ASSIGNMENT_MODES,
    F_NORMS,
    L_MODES,
    STD_EPSILON,
    VARIANT_AGGREGATIONS,
    AssignmentMode,
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
from cm2_env.reward.segments import ADVANTAGE_LEVELS, AdvantageLevel, advantages_per_action
from cm2_env.reward.turn import (
    action_rewards,
    backfilled_rewards,
    eligible_sets,
    payouts,
    step_rewards,
    trajectory_reward,
    turn_reward,
)
from cm2_env.reward.variants import VariantTurnRewardState, variant_action_rewards

__all__ = [
    "ADVANTAGE_LEVELS", "ASSIGNMENT_MODES", "F_NORMS", "L_MODES", "STD_EPSILON", "VARIANT_AGGREGATIONS",
    "AdvantageLevel", "AssignmentMode", "FNorm", "GroupScore", "Item", "LMode", "Rollout", "RolloutScore",
    "TurnHistory", "TurnRewardState", "VariantAggregation", "VariantTurnRewardState",
    "action_reward", "action_rewards", "advantages_per_action", "as_item", "as_items", "backfilled_rewards",
    "eligible_sets", "group_normalise", "normaliser", "payouts", "score_group", "step_advantages", "step_rewards",
    "trajectory_advantages", "trajectory_reward", "turn_advantages", "turn_reward", "variant_action_rewards",
]
