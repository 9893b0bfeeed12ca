"""Reproducible rollouts and training: results depend on the seeds, never on batching, queue order or timing.

The rollout engine is forced to form different generation batches -- every episode alone (``rollout_concurrency
1``, ``max_batch_size 1``) versus every episode of a step in one batch -- and the sampled tokens, rewards and
losses must agree. Logprobs (and so losses) may differ in their last bits, because logits of a different batch
shape do (agents.token_path), hence the tight tolerances on those alone.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from cm2_env.data import load_dialogues
from tests.support.tiny_models import micro_config, micro_model_dir
from train.checkpoint import list_checkpoints
from train.grpo import collect_rollouts, train


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return micro_model_dir(tmp_path_factory.mktemp("micro"), seed=5)


def config(model_dir, out, **changes):
    return micro_config(model_dir, out, **{**dict(steps=2, group_size=4, prompts_per_step=2, max_new_tokens=10,
                                                  max_turns=2, kl_coef=0.05, entropy_coef=0.01, seed=11), **changes})


ONE_BY_ONE = {"rollout_concurrency": 1, "max_batch_size": 1}
ALL_AT_ONCE = {"rollout_concurrency": 0, "max_batch_size": 64}


def _episodes(model_dir, tmp_path, dialogues, **changes):
    from train.policy import load_model, load_tokenizer

    cfg = config(model_dir, tmp_path, **changes)
    model, tokenizer = load_model(str(model_dir)), load_tokenizer(str(model_dir))
    return collect_rollouts(model, tokenizer, dialogues, cfg, seed=123, group_size=4, temperature=1.0)


def test_rollouts_are_the_same_whether_episodes_run_one_by_one_or_all_in_one_batch(model_dir, tmp_path):
    dialogues = load_dialogues("tooltalk")[:3]
    serial = _episodes(model_dir, tmp_path, dialogues, **ONE_BY_ONE)
    batched = _episodes(model_dir, tmp_path, dialogues, **ALL_AT_ONCE)
    assert [(e.dialogue_id, e.group_index) for e in serial] == [(e.dialogue_id, e.group_index) for e in batched]
    assert len(serial) == 12
    for a, b in zip(serial, batched):
        assert [s.completion_ids for s in a.steps] == [s.completion_ids for s in b.steps]
        assert [s.prompt_ids for s in a.steps] == [s.prompt_ids for s in b.steps]
        assert a.messages == b.messages and a.rewards == b.rewards and a.reward_record == b.reward_record
        for s, t in zip(a.steps, b.steps):
            assert s.logprobs == pytest.approx(t.logprobs, abs=1e-4)
    # the members of a group really sample differently (else the equality above would be trivial)
    first_actions = {tuple(e.steps[0].completion_ids) for e in serial if e.dialogue_id == dialogues[0].id}
    assert len(first_actions) > 1


def test_two_training_runs_with_different_batching_give_the_same_rewards_losses_and_weights(model_dir, tmp_path):
    dialogues = load_dialogues("tooltalk")[:4]
    serial = train(config(model_dir, tmp_path / "serial", **ONE_BY_ONE), dialogues=dialogues)
    batched = train(config(model_dir, tmp_path / "batched", **ALL_AT_ONCE), dialogues=dialogues)
    for a, b in zip(serial.records, batched.records):
        for key in ("reward/mean", "turn_reward/mean", "completion_tokens/mean", "actions_per_episode",
                    "sequences", "loss_tokens"):
            assert a[key] == b[key], key
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
    assert serial.records[0]["loss"] != 0.0
    first = load_file(str(list_checkpoints(tmp_path / "serial")[-1] / "policy.safetensors"))
    second = load_file(str(list_checkpoints(tmp_path / "batched")[-1] / "policy.safetensors"))
    assert all(torch.allclose(first[k], second[k], atol=1e-5) for k in first)
