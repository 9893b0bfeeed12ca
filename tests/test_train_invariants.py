"""Invariants of the token path: sampling and training agree, and the filters on what is trained do what they
say. One GRPO step with ppo_epochs=1 starts from ratio 1 and clips nothing, whether the old logprobs are the
sampler's or recomputed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agents.base import AgentStep
from agents.rollout import EpisodeResult
from cm2_env.data import load_dialogues
from tests.support.tiny_models import micro_model_dir
from train.config import GRPOConfig
from train.grpo import step_seed, train, training_sequences
from train.rollout_engine import transformers_agent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return micro_model_dir(tmp_path_factory.mktemp("micro"), seed=6)


@pytest.mark.parametrize("old_logprobs", ["sampler", "recompute"])
def test_the_first_update_starts_from_ratio_one_and_clips_nothing(model_dir, tmp_path, old_logprobs):
    config = GRPOConfig(model=str(model_dir), output_dir=str(tmp_path), steps=1, group_size=4, prompts_per_step=2,
                         max_new_tokens=8, max_turns=1, max_actions_per_turn=2, learning_rate=1e-3,
                         entropy_coef=0.01, kl_coef=0.0, ppo_epochs=1, ppo_mini_batches=1, bf16="false", seed=2,
                         old_logprobs=old_logprobs, progress=False).validate()
    record = train(config, dialogues=load_dialogues("tooltalk")[:2]).records[0]
    assert record["sequences"] > 0 and record["loss_tokens"] > 0
    assert record["clip_fraction"] == 0.0
    assert record["ratio_max"] == pytest.approx(1.0, abs=1e-4) and record["ratio_min"] == pytest.approx(1.0, abs=1e-4)
    written = (tmp_path / "config.yaml").read_text()  # the run says what `loss_aggregation: auto` became
    assert "loss_aggregation: auto" in written
    assert written.rstrip().endswith("# loss_aggregation auto resolves to token-mean (the grpo estimator's own)")


def test_the_trainer_samples_with_the_agent_its_factory_builds_from_the_live_policy(model_dir, tmp_path):
    built = []

    def make_agent(model, tokenizer, config, seed, temperature):
        built.append((model, seed, temperature, [p.detach().clone() for p in model.parameters()][:1]))
        return transformers_agent(model, tokenizer, config, seed, temperature)

    config = GRPOConfig(model=str(model_dir), output_dir=str(tmp_path), steps=2, group_size=4, prompts_per_step=2,
                         max_new_tokens=8, max_turns=1, max_actions_per_turn=2, learning_rate=1e-2, kl_coef=0.0,
                         bf16="false", seed=3, progress=False).validate()
    result = train(config, dialogues=load_dialogues("tooltalk")[:2], make_agent=make_agent)
    assert [(seed, temperature) for _, seed, temperature, _ in built] == [
        (step_seed(3, 0), config.temperature), (step_seed(3, 1), config.temperature)]
    assert built[0][0] is built[1][0]  # the policy being trained, not a copy
    assert result.records[0]["sequences"] > 0
    assert not built[0][3][0].equal(built[1][3][0])  # the second step's agent samples from updated weights


def _episode(advantage_free: bool, completions: list[list[int]], failed: bool = False) -> EpisodeResult:
    steps = [AgentStep(text="", message={}, prompt_ids=[1, 2, 3], completion_ids=ids, logprobs=[-0.5] * len(ids))
             for ids in completions]
    return EpisodeResult(dialogue_id="d", group_index=0, steps=steps, messages=[], rewards=[0.0] * len(steps),
                         reward_record={}, verdicts=[], failed=failed, failure=None, truncated=False,
                         turns_reached=1, reference_turns=1)


EOS = 9


def test_mask_truncated_completions_keeps_finished_actions_and_drops_the_loss_of_cut_ones():
    episode = _episode(False, [[4, 5, EOS], [6, 7, 8]])  # the second action was cut by max_new_tokens
    [masked] = training_sequences([episode], [[1.0, 1.0]], skip_zero_advantage=False, eos_id=EOS)
    assert masked.n_loss_tokens == 3  # only the finished action's tokens
    plain = training_sequences([episode], [[1.0, 1.0]], skip_zero_advantage=False)
    assert sum(s.n_loss_tokens for s in plain) == 6


def test_skip_zero_advantage_drops_episodes_whose_every_advantage_is_zero():
    zero, some = _episode(True, [[4, EOS]]), _episode(False, [[5, EOS]])
    kept = training_sequences([zero, some], [[0.0], [0.5]], skip_zero_advantage=True)
    assert len(kept) == 1 and kept[0].advantages[-1] == 0.5
    assert len(training_sequences([zero, some], [[0.0], [0.5]], skip_zero_advantage=False)) == 2
    assert training_sequences([some], [None], skip_zero_advantage=False) == []  # a failed episode has none


def test_importing_the_environment_package_loads_neither_torch_nor_the_upper_layers():
    code = ("import sys, cm2_env, cm2_env.env, cm2_env.vector, cm2_env.wrappers, cm2_env.judge, cm2_env.simulator, "
            "cm2_env.reward, cm2_env.llm, cm2_env.data, cm2_env.cli, cm2_env.specs, cm2_env.backends; "
            "print(sorted(m for m in ('torch', 'transformers', 'agents', 'train', 'benchmarks') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_held_out_validation_is_logged_before_training_every_interval_and_at_the_end(model_dir, tmp_path):
    import json

    dialogues = load_dialogues("tooltalk")
    held_out = [d.id for d in dialogues[10:12]]
    config = GRPOConfig(model=str(model_dir), output_dir=str(tmp_path), steps=3, group_size=2, prompts_per_step=1,
                        max_new_tokens=8, max_turns=1, max_actions_per_turn=2, bf16="false", seed=1,
                        validation_dialogues=held_out, validation_interval=2, eval_samples=2, eval_temperature=1.0,
                        checkpoint_interval=0, progress=False).validate()
    train(config, dialogues=dialogues[:2] + dialogues[10:12])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "validation/mean_reward" in r] == [0, 2, 3]
    assert all(0 <= r["validation/mean_reward"] <= 1 for r in rows if "validation/mean_reward" in r)
    bad = GRPOConfig(**{**config.to_dict(), "validation_dialogues": ["no/such"], "output_dir": str(tmp_path / "b")})
    with pytest.raises(ValueError, match="validation_dialogues.*no/such"):
        train(bad.validate(), dialogues=dialogues[:2])
    # a noisy training judge with a clean validation judge: validation before training is the clean number
    noisy = config.updated(judge="noisy:0.5:rule", validation_judge="rule", steps=1, output_dir=str(tmp_path / "n"))
    train(noisy, dialogues=dialogues[:2] + dialogues[10:12])
    first = json.loads((tmp_path / "n" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["validation/mean_reward"] == rows[0]["validation/mean_reward"]
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="validation_judge"):
        config.updated(validation_judge="replay")
    with pytest.raises(ConfigError, match="validation_dialogues.*training dialogues too"):
        config.updated(dialogue_ids=held_out[:1])
    with pytest.raises(ConfigError, match="validation_interval.*validation_dialogues is empty"):
        config.updated(validation_dialogues=[])

