"""NoisyJudge: judge noise as a controlled variable (the Figure 3 study's noise axis)."""

from __future__ import annotations

import asyncio

import pytest

from agents import ReplayAgent
from agents.rollout import run_rollouts
from cm2_env.data import load_dialogues
from cm2_env.errors import SpecError
from cm2_env.judge import NoisyJudge, RuleJudge, make_judge


@pytest.fixture(scope="module")
def dialogues():
    return load_dialogues("tooltalk")[:12]


def _verdicts(dialogues, judge):
    results = run_rollouts(dialogues, ReplayAgent(dialogues), progress=False, env_kwargs={"judge": judge,
                                                                                          "strict": False})
    return [(r.R, r.verdicts) for r in results], results


def _request(dialogue):
    from cm2_env.judge import JudgeRequest

    messages = dialogue.to_record()["messages"]
    return JudgeRequest(dialogue, 0, 1, dialogue.checklist()[0], messages[:1], messages[1:3])


def test_p_0_changes_nothing_and_p_1_flips_every_decided_verdict(dialogues):
    clean, _ = _verdicts(dialogues, "rule")
    assert _verdicts(dialogues, "noisy:0:rule")[0] == clean
    for dialogue in dialogues[:4]:
        inner = asyncio.run(RuleJudge().judge(_request(dialogue)))
        flipped = asyncio.run(NoisyJudge(RuleJudge(), 1.0).judge(_request(dialogue)))
        assert set(flipped) == set(inner)
        for item_id, verdict in inner.items():
            assert flipped[item_id].passed is (not verdict.passed) and flipped[item_id].details["flipped"]
            assert flipped[item_id].source == verdict.source


def test_flips_are_a_function_of_the_request_and_happen_at_about_the_rate_asked(dialogues):
    judge = NoisyJudge(RuleJudge(), 0.15, seed=3)
    first, _ = _verdicts(dialogues, judge)
    again, _ = _verdicts(dialogues, NoisyJudge(RuleJudge(), 0.15, seed=3))
    assert first == again  # same seed, same requests: same verdicts, whatever the concurrency
    other, _ = _verdicts(dialogues, NoisyJudge(RuleJudge(), 0.15, seed=4))
    assert other != first
    usage = judge.usage()["noise"]
    assert usage["decided"] > 100 and 0.05 < usage["flipped"] / usage["decided"] < 0.30


def test_the_spec_names_the_probability_and_the_inner_judge():
    judge = make_judge("noisy:0.05:rule", noise_seed=7)
    assert isinstance(judge, NoisyJudge) and judge.p == 0.05 and judge.seed == 7
    assert isinstance(judge.inner, RuleJudge)
    for bad in ("noisy:1.5:rule", "noisy:x:rule", "noisy:0.1:", "noisy:0.1:replay"):
        with pytest.raises(SpecError):
            make_judge(bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        NoisyJudge(RuleJudge(), -0.1)
    asyncio.run(judge.aclose())


def test_a_turn_draws_once_per_item_so_padding_it_with_actions_buys_no_false_pass():
    from cm2_env.judge import JudgeRequest

    dialogue = load_dialogues("tooltalk")[0]
    messages = dialogue.to_record()["messages"]
    user, first = messages[1], {"role": "assistant", "content": "Let me check."}
    judge = NoisyJudge(RuleJudge(), 0.5, seed=1)
    items = dialogue.checklist()[0]
    one = JudgeRequest(dialogue, 0, 1, items, messages[:1], [user, first])
    padded = [JudgeRequest(dialogue, 0, k, items, messages[:1],
                           [user, first] + [{"role": "assistant", "content": f"more {i}"} for i in range(k - 1)])
              for k in range(2, 6)]
    for item in items:  # the same inversion at every action of the turn
        assert {judge.flips(request, item.id) for request in padded} == {judge.flips(one, item.id)}
    other_first = JudgeRequest(dialogue, 0, 1, items, messages[:1], [user, {"role": "assistant", "content": "No."}])
    draws = [(judge.flips(one, i.id), judge.flips(other_first, i.id)) for i in items]
    assert any(a != b for a, b in draws) or len(items) < 3  # another first action: another draw


def test_the_trainer_gives_a_noisy_judge_the_run_s_seed():
    from train.config import GRPOConfig
    from train.grpo import env_kwargs

    config = GRPOConfig(model="m", judge="noisy:0.1:rule", seed=5)
    assert env_kwargs(config)["judge_options"] == {"noise_seed": 5}
    assert "judge_options" not in env_kwargs(GRPOConfig(model="m", judge="rule", seed=5))

