"""The advantage-estimator and loss-aggregation registries (train.estimators): each formula against values worked
out by hand, at the trajectory, turn and step level of a hand-built group, and the config that selects them."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from agents.base import AgentStep
from agents.rollout import EpisodeResult
from cm2_env.reward import replay_histories
from train.config import ConfigError, GRPOConfig
from train.estimators import (ESTIMATORS, LOSS_AGGREGATIONS, Estimator, dr_grpo, group_means, grpo,
                              loss_aggregation_for, reinforce_pp, rloo, whiten)
from train.grpo import action_advantages

# two comparison groups: [1, 0, 0, 1] and [3, 1]
VALUES = np.array([1.0, 0.0, 0.0, 1.0, 3.0, 1.0])
GROUPS = np.array([0, 0, 0, 0, 1, 1])


def test_each_estimator_compares_a_value_with_its_own_group_only():
    assert grpo(VALUES, GROUPS, 2) == pytest.approx([0.5, -0.5, -0.5, 0.5, 1.0, -1.0])
    # sample std (ddof 1): group 0 sqrt(1/3), group 1 sqrt(2)
    s0, s1 = (1 / 3) ** 0.5 + 1e-6, 2 ** 0.5 + 1e-6
    assert grpo(VALUES, GROUPS, 2, "std") == pytest.approx([0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0, 1 / s1, -1 / s1])
    assert dr_grpo(VALUES, GROUPS, 2) == pytest.approx([0.5, -0.5, -0.5, 0.5, 1.0, -1.0])
    # leave one out: 1 - mean(0, 0, 1) = 2/3; 0 - mean(0, 1, 1) = -2/3; 3 - 1 = 2
    assert rloo(VALUES, GROUPS, 2) == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 2.0, -2.0])
    assert reinforce_pp(VALUES, GROUPS, 2) == pytest.approx([0.5, -0.5, -0.5, 0.5, 1.0, -1.0])
    assert group_means(VALUES, GROUPS, 3) == pytest.approx([0.5, 2.0, 0.0])  # an empty group: 0


def test_whitening_centres_and_scales_the_whole_batch():
    out = whiten(np.array([2.0, 4.0, 6.0, 8.0]))
    std = statistics.pstdev([2, 4, 6, 8])
    assert out == pytest.approx([(x - 5) / (std + 1e-6) for x in (2, 4, 6, 8)])
    assert float(out.mean()) == pytest.approx(0.0, abs=1e-12)
    assert whiten(np.array([3.0])) == pytest.approx([0.0]) and whiten(np.array([])).size == 0
    # weighted: [0, 1] with weights [3, 1] -> mean 1/4, std sqrt(3/16)
    std = (3 / 16) ** 0.5 + 1e-6
    assert whiten(np.array([0.0, 1.0]), np.array([3.0, 1.0])) == pytest.approx([-0.25 / std, 0.75 / std])


CHECKLIST = [
    [{"id": "C0", "weight": 0.5, "dependence": []}, {"id": "C1", "weight": 0.5, "dependence": []}],
    [{"id": "C0", "weight": 1.0, "dependence": []}],
]


def _episode(dialogue: str, index: int, actions: int, record: dict, tokens: int = 1) -> EpisodeResult:
    step = AgentStep(text="", message={"role": "assistant", "content": ""}, prompt_ids=[1], completion_ids=[2] * tokens,
                     logprobs=[-0.5] * tokens)
    return EpisodeResult(dialogue_id=dialogue, group_index=index, steps=[step] * actions, messages=[], rewards=[],
                         reward_record=record, verdicts=None, failed=bool(record.get("failed")), failure=None,
                         truncated=False, turns_reached=len(record["turns"]), reference_turns=2)


@pytest.fixture()
def episodes():
    # rollout 0: turn 0 in 2 actions (C0 at 1, C1 at 2), turn 1 in 1 action (C0) -> R = (1 + 1) / 2 = 1
    # rollout 1: turn 0 in 1 action, C0 only -> R = 0.5 / 2 = 0.25; rollout 2: turn 0 in 1 action, nothing -> R = 0
    # rollout 3 failed: in no baseline
    records = replay_histories(CHECKLIST, [
        {"failed": False, "turns": [{"steps": 2, "first_satisfied": {"C0": 1, "C1": 2}},
                                    {"steps": 1, "first_satisfied": {"C0": 1}}]},
        {"failed": False, "turns": [{"steps": 1, "first_satisfied": {"C0": 1}}]},
        {"failed": False, "turns": [{"steps": 1, "first_satisfied": {}}]},
        {"failed": True, "turns": []},
    ])
    return [_episode("d", i, n, r) for i, (n, r) in enumerate(zip([3, 1, 1, 0], records))]


def _advantages(episodes, **config):
    return action_advantages(episodes, GRPOConfig(**config))


def test_rloo_at_every_level_matches_the_hand_computation(episodes):
    # trajectory: R = [1, 0.25, 0]; 1 - mean(0.25, 0) = 0.875, 0.25 - 0.5 = -0.25, 0 - 0.625 = -0.625
    out = _advantages(episodes, estimator="rloo", advantage_level="trajectory")
    assert out[0] == pytest.approx([0.875] * 3) and out[1] == pytest.approx([-0.25])
    assert out[2] == pytest.approx([-0.625]) and out[3] is None
    # turn 0: R_0 = [1, 0.5, 0] -> 1 - 0.25, 0.5 - 0.5, 0 - 0.75; turn 1 has one rollout: 0
    out = _advantages(episodes, estimator="rloo", advantage_level="turn")
    assert out[0] == pytest.approx([0.75, 0.75, 0.0]) and out[1] == pytest.approx([0.0])
    assert out[2] == pytest.approx([-0.75])
    # step, turn 0: C0 earned by [1, 1, 0] -> [0.5, 0.5, -1]; C1 by [1, 0, 0] -> [1, -0.5, -0.5].
    # rollout 0: action 1 sees C0 and C1: 0.5*0.5 + 0.5*1 = 0.75; action 2 sees C1: 1.
    # turn 1: C0 earned by [1, 0, 0] (unreached counts 0) -> rollout 0: 1 - 0 = 1.
    # rollout 1 action 1: 0.5*0.5 + 0.5*(-0.5) = 0; rollout 2: 0.5*(-1) + 0.5*(-0.5) = -0.75
    out = _advantages(episodes, estimator="rloo", advantage_level="step")
    assert out[0] == pytest.approx([0.75, 1.0, 1.0]) and out[1] == pytest.approx([0.0])
    assert out[2] == pytest.approx([-0.75])


def test_grpo_and_dr_grpo_share_the_group_mean_baseline_and_only_grpo_divides_by_the_std(episodes):
    mean = 1.25 / 3
    for name in ("grpo", "dr_grpo"):
        out = _advantages(episodes, estimator=name, advantage_level="trajectory")
        assert out[0] == pytest.approx([1 - mean] * 3) and out[2] == pytest.approx([-mean])
    std = statistics.stdev([1.0, 0.25, 0.0]) + 1e-6
    out = _advantages(episodes, estimator="grpo", f_norm="std", advantage_level="trajectory")
    assert out[0] == pytest.approx([(1 - mean) / std] * 3)
    # step level with the paper's estimator: b_C0 = 2/3, b_C1 = 1/3 in turn 0; rollout 0 action 1:
    # 0.5*(1 - 2/3) + 0.5*(1 - 1/3) = 0.5
    out = _advantages(episodes, estimator="grpo", advantage_level="step")
    assert out[0][0] == pytest.approx(0.5)


def test_reinforce_pp_whitens_the_group_baselined_advantages_over_every_live_action(episodes):
    mean = 1.25 / 3
    grouped = [1 - mean] * 3 + [0.25 - mean] + [-mean]  # per action, in episode order
    centre, spread = statistics.fmean(grouped), statistics.pstdev(grouped) + 1e-6
    out = _advantages(episodes, estimator="reinforce_pp", advantage_level="trajectory")
    assert out[0] + out[1] + out[2] == pytest.approx([(a - centre) / spread for a in grouped])
    assert out[3] is None


def test_reinforce_pp_weighs_actions_by_their_tokens_and_leaves_groups_without_spread_to_be_skipped(episodes):
    # rollout 0's three actions are 4 tokens each: the batch statistics count them 4 times
    episodes = [_episode("d", 0, 3, episodes[0].reward_record, tokens=4), *episodes[1:]]
    # a second dialogue whose two rollouts earned the same: advantages 0 before whitening
    same = replay_histories(CHECKLIST, [{"failed": False, "turns": [{"steps": 1, "first_satisfied": {"C0": 1}}]}] * 2)
    episodes += [_episode("e", i, 1, record) for i, record in enumerate(same)]
    mean = 1.25 / 3
    grouped, weights = [1 - mean] * 3 + [0.25 - mean] + [-mean], [4, 4, 4, 1, 1]
    centre = sum(a * w for a, w in zip(grouped, weights)) / sum(weights)
    spread = (sum(w * (a - centre) ** 2 for a, w in zip(grouped, weights)) / sum(weights)) ** 0.5 + 1e-6
    out = _advantages(episodes, estimator="reinforce_pp", skip_zero_advantage=True)
    assert out[0] + out[1] + out[2] == pytest.approx([(a - centre) / spread for a in grouped])
    assert out[4] == [0.0] and out[5] == [0.0]  # kept at 0 and out of the statistics: skipped, not pushed
    with_zero = _advantages(episodes, estimator="reinforce_pp", skip_zero_advantage=False)
    assert with_zero[4] != [0.0]  # without the skip, every live action is whitened


def test_a_registered_estimator_is_one_function_and_one_line(episodes, monkeypatch):
    def half_baseline(values, groups, n_groups, f_norm):
        return values - group_means(values, groups, n_groups)[groups] / 2

    monkeypatch.setitem(ESTIMATORS, "half_baseline", Estimator(half_baseline, source="a test"))
    out = _advantages(episodes, estimator="half_baseline", advantage_level="trajectory")
    assert out[1] == pytest.approx([0.25 - 1.25 / 6])


def test_loss_aggregations_weigh_tokens_as_their_formulas_say():
    assert LOSS_AGGREGATIONS["token-mean"]([2, 6], 10) == pytest.approx([1 / 8, 1 / 8])
    assert LOSS_AGGREGATIONS["seq-mean-token-mean"]([2, 6, 0], 10) == pytest.approx([1 / 4, 1 / 12, 0.0])
    assert LOSS_AGGREGATIONS["seq-mean-token-sum-norm"]([2, 6, 0], 10) == pytest.approx([1 / 20] * 3)
    assert loss_aggregation_for("dr_grpo", "auto") == "seq-mean-token-sum-norm"
    assert loss_aggregation_for("grpo", "auto") == "token-mean"
    assert loss_aggregation_for("dr_grpo", "token-mean") == "token-mean"


def test_the_config_names_the_field_and_the_fix_for_an_unknown_estimator_or_a_std_it_never_uses():
    with pytest.raises(ConfigError, match="estimator") as unknown:
        GRPOConfig(estimator="ppo").validate()
    assert "grpo" in str(unknown.value) and "rloo" in str(unknown.value)
    with pytest.raises(ConfigError, match="f_norm") as std:
        GRPOConfig(estimator="rloo", f_norm="std").validate()
    assert "f_norm: none" in str(std.value)
    with pytest.raises(ConfigError, match="loss_aggregation"):
        GRPOConfig(loss_aggregation="mean").validate()
    assert GRPOConfig(estimator="dr_grpo").validate().loss_aggregation == "auto"
