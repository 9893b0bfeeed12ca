"""The two registries that make an RL algorithm out of the trainer: advantage estimators and loss aggregations.

**Advantage estimators** (config ``estimator``). An estimator turns rewards into advantages by comparing each
value with the others of its comparison group, at the level ``advantage_level`` selects (the paper's three):

- ``trajectory``: the group is the G rollouts of one dialogue; the values are their rewards R (Eq. 4);
- ``turn``: one group per turn t, the rollouts that reached it; the values are their turn rewards R_t (Eq. 6);
- ``step``: one group per checklist item c of turn t; the values are the G indicators "rollout i earned c in
  turn t" (a rollout that never reached t counts 0); an action's advantage is then the weighted mean of the
  advantages of the items eligible at it (Eq. 10, in :func:`cm2_env.reward.score_group`).

Each estimator is a plain function ``(values, groups, n_groups, f_norm) -> advantages`` over labelled values
(``groups[k]``: the comparison group of ``values[k]``, ids 0..n_groups-1); a group of fewer than two values gets
advantage 0 whatever the estimator. An :class:`Estimator` entry adds what is not per group: whitening over the
whole step's batch, and the loss aggregation the method was published with (used when ``loss_aggregation`` is
``auto``). To add one, write the function and one line in :data:`ESTIMATORS`::

    def half_baseline(values, groups, n_groups, f_norm):
        # A_i = x_i - mean_g / 2, with its formula and source in a docstring
        return values - group_means(values, groups, n_groups)[groups] / 2

    ESTIMATORS["half_baseline"] = Estimator(half_baseline, source="...")

**Loss aggregations** (config ``loss_aggregation``). A mini-batch's loss is a weighted sum over its loss tokens;
an aggregation gives each sequence's per-token weight from the sequences' loss-token counts
(:data:`LOSS_AGGREGATIONS`). A "sequence" is a training sequence: one episode's actions, or a part of them when
the chat template re-renders the history (:mod:`train.sequences`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cm2_env.reward import STD_EPSILON
from cm2_env.reward.group import group_mean_baseline, group_means  # group_means: for custom estimators


def grpo(values: np.ndarray, groups: np.ndarray, n_groups: int, f_norm: str = "none") -> np.ndarray:
    """GRPO: A_i = (x_i - mean_g) / F_g, F_g = 1 (``f_norm: none``) or std_g + 1e-6 (``f_norm: std``, sample
    std, ddof 1).

    Source: Shao et al. 2024, "DeepSeekMath" (group-relative advantages); the CM2 paper, Eq. 5, 7 and 9, whose
    final runs use F_norm = 1.
    """
    return group_mean_baseline(values, groups, n_groups, f_norm)


def dr_grpo(values: np.ndarray, groups: np.ndarray, n_groups: int, f_norm: str = "none") -> np.ndarray:
    """Dr. GRPO: A_i = x_i - mean_g, never divided by the group's std (which up-weights groups whose rewards
    barely differ); published with a constant length normaliser in the loss (``seq-mean-token-sum-norm``).

    Source: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective".
    """
    return group_mean_baseline(values, groups, n_groups)


def rloo(values: np.ndarray, groups: np.ndarray, n_groups: int, f_norm: str = "none") -> np.ndarray:
    """RLOO: A_i = x_i - mean_{j != i, j in g} x_j, the mean of the group's other values as the baseline, which
    equals n_g / (n_g - 1) * (x_i - mean_g): an unbiased baseline, since it does not depend on x_i.

    Source: Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"; Ahmadian et al. 2024, "Back
    to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs".
    """
    count = np.bincount(groups, minlength=n_groups)[groups]
    return group_mean_baseline(values, groups, n_groups) * count / np.maximum(count - 1, 1)


def reinforce_pp(values: np.ndarray, groups: np.ndarray, n_groups: int, f_norm: str = "none") -> np.ndarray:
    """REINFORCE++ with a group baseline: A_i = x_i - mean_g here, then whitened over the whole step's batch
    (:func:`whiten`: minus the batch mean, divided by the batch std + 1e-6, both over the batch's completion
    tokens) -- a batch-level normalisation, where GRPO normalises per group.

    Source: Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models" (the
    "-baseline" variant for several samples per prompt).
    """
    return group_mean_baseline(values, groups, n_groups)


def whiten(advantages: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(A - mean) / (std + 1e-6) over a whole batch, mean and population std weighted by ``weights`` (the trainer
    weighs each action by its completion tokens); one value becomes 0, an empty batch stays empty."""
    if advantages.size == 0:
        return advantages
    weights = np.ones_like(advantages) if weights is None else np.asarray(weights, dtype=float)
    weights = weights / weights.sum()
    mean = float((weights * advantages).sum())
    std = float(np.sqrt((weights * (advantages - mean) ** 2).sum()))
    return (advantages - mean) / (std + STD_EPSILON)


def whiten_actions(advantages: list[list[float] | None], tokens: list[list[int]], keep_zero: bool) -> None:
    """Whiten a step's per-action advantages in place (:func:`whiten`), each action weighted by its completion
    tokens (``tokens[i][k]``; weight 1 where an episode's counts do not line up with its actions), as REINFORCE++
    normalises over the batch's tokens. ``None`` (a failed episode) stays None. With ``keep_zero``
    (``skip_zero_advantage``), an episode whose advantages are all 0 -- a group without reward spread -- keeps
    them and stays out of the statistics, so it is still skipped rather than pushed by the batch's mean."""
    chosen = [i for i, a in enumerate(advantages) if a is not None and (any(a) or not keep_zero)]
    values: list[float] = []
    weights: list[float] = []
    for i in chosen:
        per_action = advantages[i] or []
        counts = tokens[i] if len(tokens[i]) == len(per_action) else [1] * len(per_action)
        values.extend(per_action)
        weights.extend(max(1, n) for n in counts)
    flat = whiten(np.array(values), np.array(weights, dtype=float))
    position = 0
    for i in chosen:
        n = len(advantages[i] or [])
        advantages[i] = flat[position: position + n].tolist()
        position += n


@dataclass(frozen=True)
class Estimator:
    """A registry entry: ``group`` is the per-group function; ``whiten_batch``: afterwards, whiten the step's
    advantages over all its live actions, each weighted by its completion tokens (with ``skip_zero_advantage``,
    groups without reward spread stay 0 and out of the statistics); ``loss_aggregation``: what ``auto`` means;
    ``std``: whether ``f_norm: std`` applies (else the config refuses it)."""

    group: Callable[[np.ndarray, np.ndarray, int, str], np.ndarray]
    source: str
    whiten_batch: bool = False
    loss_aggregation: str = "token-mean"
    std: bool = False


ESTIMATORS: dict[str, Estimator] = {
    "grpo": Estimator(grpo, "Shao et al. 2024; CM2 Eq. 5, 7, 9", std=True),
    "dr_grpo": Estimator(dr_grpo, "Liu et al. 2025", loss_aggregation="seq-mean-token-sum-norm"),
    "rloo": Estimator(rloo, "Kool et al. 2019; Ahmadian et al. 2024"),
    "reinforce_pp": Estimator(reinforce_pp, "Hu 2025", whiten_batch=True),
}


def token_mean(loss_tokens: list[int], length_norm: int) -> list[float]:
    """Every loss token of the mini-batch weighs the same: w = 1/N, N = sum_s n_s.

    Source: the GRPO and PPO defaults of verl, used by the CM2 paper's runs. Long sequences weigh more.
    """
    total = sum(loss_tokens)
    return [1.0 / total] * len(loss_tokens)


def seq_mean_token_mean(loss_tokens: list[int], length_norm: int) -> list[float]:
    """Every sequence weighs the same and its tokens share its weight: w_s = 1/(S n_s), S = sequences with loss
    tokens. A long (often failed) completion no longer outweighs a short one.

    Source: the original GRPO objective (Shao et al. 2024), per-sample mean then mean over samples.
    """
    count = sum(1 for n in loss_tokens if n > 0)
    return [1.0 / (count * n) if n else 0.0 for n in loss_tokens]


def seq_mean_token_sum_norm(loss_tokens: list[int], length_norm: int) -> list[float]:
    """Every token weighs w = 1/(S L) with a constant L (the completion budget ``max_new_tokens``): no length
    normalisation inside a sequence, so a token's weight does not depend on its sequence's length.

    Source: Liu et al. 2025 (Dr. GRPO).
    """
    count = sum(1 for n in loss_tokens if n > 0)
    return [1.0 / (count * max(1, length_norm))] * len(loss_tokens)


#: name -> per-sequence token weights ``(loss_tokens, length_norm) -> weights``.
LOSS_AGGREGATIONS: dict[str, Callable[[list[int], int], list[float]]] = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}


def loss_aggregation_for(estimator: str, loss_aggregation: str) -> str:
    """The aggregation a run uses: ``loss_aggregation``, or the estimator's own when it is ``auto``."""
    return ESTIMATORS[estimator].loss_aggregation if loss_aggregation == "auto" else loss_aggregation
