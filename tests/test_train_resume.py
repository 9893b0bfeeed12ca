"""Exact resume: a run interrupted after a checkpoint and resumed computes the same next-step loss, and ends
with the same weights, as an uninterrupted run with the same seed."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cm2_env.data import load_dialogues
from tests.support.tiny_models import micro_config, micro_model_dir
from train.checkpoint import list_checkpoints
from train.grpo import train


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return micro_model_dir(tmp_path_factory.mktemp("micro"), seed=1)


def config(model_dir, out, **changes):
    return micro_config(model_dir, out, **{**dict(steps=3, group_size=2, prompts_per_step=1, max_new_tokens=8,
                                                  kl_coef=0.05, entropy_coef=0.01, lr_schedule="cosine",
                                                  warmup_ratio=0.3, seed=3), **changes})


def test_resuming_from_a_checkpoint_reproduces_the_next_steps_loss(model_dir, tmp_path):
    dialogues = load_dialogues("tooltalk")[:2]
    full = train(config(model_dir, tmp_path / "full"), dialogues=dialogues)
    interrupted = train(config(model_dir, tmp_path / "cut"), dialogues=dialogues, max_steps=1)
    assert interrupted.steps_done == 1 and interrupted.final_dir is None
    resumed = train(config(model_dir, tmp_path / "cut", resume="auto"), dialogues=dialogues)

    losses_full = [r["loss"] for r in full.records]
    losses_resumed = [r["loss"] for r in interrupted.records + resumed.records]
    assert len(set(losses_full)) == 3  # the steps really differ, so equality below is not a coincidence
    assert losses_resumed == pytest.approx(losses_full, rel=1e-6, abs=1e-9)
    assert [r["lr"] for r in resumed.records] == pytest.approx([r["lr"] for r in full.records[1:]])

    a = load_file(str(list_checkpoints(tmp_path / "full")[-1] / "policy.safetensors"))
    b = load_file(str(list_checkpoints(tmp_path / "cut")[-1] / "policy.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def test_resume_keeps_only_the_newest_checkpoints(model_dir, tmp_path):
    train(config(model_dir, tmp_path, steps=3, keep_checkpoints=2, kl_coef=0.0), dialogues=load_dialogues("tooltalk")[:1])
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002", "step-000003"]


def test_lora_runs_train_only_the_adapters_and_use_the_base_model_as_kl_reference(model_dir, tmp_path):
    from train.policy import load_model

    result = train(config(model_dir, tmp_path, steps=2, lora=True, lora_r=4, lora_alpha=8, learning_rate=5e-3),
                   dialogues=load_dialogues("tooltalk")[:1])
    assert result.steps_done == 2
    assert result.records[-1]["kl"] > 0  # the adapted policy moved away from the base model
    saved = load_file(str(list_checkpoints(tmp_path)[-1] / "policy.safetensors"))
    base = load_model(str(model_dir)).state_dict()
    lora_keys = [k for k in saved if "lora_" in k]
    assert lora_keys
    for key, value in saved.items():
        if "lora_" in key:
            continue
        name = key.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(value, base[name]), key  # base weights frozen
    assert (result.final_dir / "adapter_config.json").exists()
