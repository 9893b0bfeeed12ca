"""Cold-start SFT: exact assistant-only masks on bundled dialogues, learning, special-token initialisation,
the config file contract and `cm2 sft`."""

from __future__ import annotations

import json

from dataclasses import fields

import pytest
import torch
from click.testing import CliRunner

from cm2_env.data import load_dialogues
from tests.support.tiny_models import micro_model_dir
from train.config import ConfigError, GRPOConfig, SFTConfig, load_config, load_sft_config
from train.policy import load_model, load_tokenizer
from train.sft import init_special_token_embeddings, run_sft, sft_sequences


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return micro_model_dir(tmp_path_factory.mktemp("micro"))


@pytest.fixture(scope="module")
def dialogues():
    return load_dialogues("tooltalk")[:3]


def test_sft_sequences_train_on_every_assistant_message_and_only_on_them(model_dir, dialogues):
    tokenizer = load_tokenizer(str(model_dir))
    for dialogue in dialogues:
        (sequence,) = sft_sequences([dialogue], tokenizer, max_length=100_000)
        trained = tokenizer.decode([t for t, m in zip(sequence.input_ids, sequence.loss_mask) if m])
        record = dialogue.to_record()
        assistant = [m for m in record["messages"] if m["role"] == "assistant"]
        assert trained.count("<|im_end|>") == len(assistant)
        for message in assistant:
            assert (message.get("content") or "") in trained
        for message in record["messages"]:
            if message["role"] in ("user", "tool", "system") and len(message["content"]) > 30:
                assert message["content"] not in trained


def test_sft_lowers_the_assistant_token_loss(model_dir, dialogues, tmp_path):
    config = SFTConfig(model=str(model_dir), output_dir=str(tmp_path / "sft"), epochs=6, learning_rate=3e-3,
                       batch_size=3, warmup_ratio=0.0, lr_schedule="constant", max_length=3072,
                       bf16="false")
    result = run_sft(config, dialogues=dialogues)
    assert result.steps == 6
    assert result.losses[-1] < result.losses[0] - 1.0
    saved = tmp_path / "sft"
    assert (saved / "config.json").exists() and (saved / "tokenizer.json").exists()
    lines = (saved / "sft_metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 7))


def test_special_tokens_start_from_the_mean_of_related_word_embeddings(model_dir):
    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir))
    done = init_special_token_embeddings(model, tokenizer)
    assert set(done) == {"<think>", "</think>", "<tool_call>", "</tool_call>", "<|im_start|>", "<|im_end|>"}
    table = model.get_input_embeddings().weight

    def word(w):
        return table[tokenizer.encode(w, add_special_tokens=False)].mean(0)

    expected = torch.stack([word("tool"), word("call"), word("start")]).mean(0)
    assert torch.allclose(table[tokenizer.convert_tokens_to_ids("<tool_call>")], expected)
    expected = torch.stack([word("role"), word("exit")]).mean(0)
    assert torch.allclose(table[tokenizer.convert_tokens_to_ids("<|im_end|>")], expected)


def test_config_errors_name_the_file_line_field_and_fix(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: m\ngroup_size: 8\nlerning_rate: 1e-4\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:3: unknown field 'lerning_rate'.*did you mean 'learning_rate'"):
        load_config(path)
    path.write_text("model: m\nadvantage_level: episode\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:2: field 'advantage_level'.*trajectory, turn, step"):
        load_config(path)
    path.write_text("model: m\ngroup_size: eight\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:2: field 'group_size' must be of type int"):
        load_config(path)
    path.write_text("model: m\ngroup_size: 1\n")
    with pytest.raises(ConfigError, match="at least 2 rollouts"):
        load_config(path)


def test_a_run_file_gives_sft_its_own_section_over_the_shared_fields(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: m\nseed: 3\nlearning_rate: 1e-5\noutput_dir: out/grpo\nbf16: false\n"
                    "sft:\n  epochs: 3\n  learning_rate: 2e-4\n  seed: 5\n")
    grpo, sft = load_config(path), load_sft_config(path, output_dir=None)
    assert (grpo.learning_rate, grpo.seed, grpo.output_dir) == (1e-5, 3, "out/grpo")
    assert (sft.epochs, sft.learning_rate, sft.seed, sft.model, sft.bf16) == (3.0, 2e-4, 5, "m", "false")
    assert sft.output_dir == "out/grpo/sft" and load_sft_config(path, output_dir="x").output_dir == "x"
    assert not {"group_size", "kl_coef", "judge"} & {f.name for f in fields(SFTConfig)}
    assert not {"epochs", "max_length"} & {f.name for f in fields(GRPOConfig)}


def test_sft_section_errors_name_the_section_key_and_line_and_old_flat_keys_say_where_they_moved(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: m\nsft_epochs: 2\nsft:\n  epoch: 2\n  batch_size: 0\n  lr_schedule: step\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)  # the GRPO loader checks the SFT section too
    message = str(error.value)
    assert "4 problems" in message
    assert f"{path}:2: field 'sft_epochs' moved to the sft: section. Fix: write `epochs: 2` under `sft:`" in message
    assert f"{path}:4: unknown field 'sft.epoch'" in message and "did you mean 'sft.epochs'" in message
    assert f"{path}:5: field 'sft.batch_size': must be at least 1" in message
    assert f"{path}:6: field 'sft.lr_schedule': must be one of constant, linear, cosine, got 'step'" in message
    path.write_text("model: m\nbf16: maybe\nsft:\n  epochs: 1\n")
    with pytest.raises(ConfigError) as error:  # a shared field is reported once, where it was written
        load_sft_config(path)
    assert str(error.value).count("field 'bf16'") == 1 and str(error.value).startswith(f"{path}:2: field 'bf16'")


def test_config_reads_yaml_numbers_and_round_trips(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: m\nlearning_rate: 1e-4\nbf16: true\nadam_betas: [0.9, 0.95]\nsteps: 3\n")
    config = load_config(path, seed=7)
    assert (config.learning_rate, config.bf16, config.adam_betas, config.steps, config.seed) == (1e-4, "true", [0.9, 0.95], 3, 7)
    again = tmp_path / "again.yaml"
    again.write_text(config.to_yaml())
    assert load_config(again) == config


def test_cm2_sft_trains_from_a_config_file_and_reports_json(model_dir, tmp_path):
    from cm2_env.cli import main

    data = tmp_path / "two.jsonl"
    data.write_text("".join(json.dumps(d.to_record()) + "\n" for d in load_dialogues("tooltalk")[:2]))
    config = tmp_path / "sft.yaml"
    config.write_text(f"model: {model_dir}\ndataset: {data}\noutput_dir: {tmp_path / 'run'}\nsft:\n  epochs: 1\n"
                      "  batch_size: 2\n  learning_rate: 1.0e-3\n  max_length: 3072\n  init_special_embeddings: true\n")
    result = CliRunner().invoke(main, ["sft", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["steps"] == 1 and summary["output_dir"].endswith("sft")
    assert (tmp_path / "run" / "sft" / "model.safetensors").exists()


def test_a_field_in_the_wrong_section_says_where_it_belongs_and_overrides_are_checked_too(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: m\nepochs: 2\nsft:\n  kl_coef: 0.1\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert f"{path}:2: field 'epochs' is an SFT field. Fix: move it under `sft:`" in str(error.value)
    assert f"{path}:4: field 'sft.kl_coef' is a GRPO field, not an SFT one. Fix: move it to the top level" in str(
        error.value)
    path.write_text("model: m\n")
    with pytest.raises(ConfigError, match="unknown field 'bogus'"):
        load_config(path, bogus=1)
    with pytest.raises(ConfigError, match="field 'seed' must be of type int"):
        load_config(path, seed="seven")
    assert load_sft_config(path, output_dir="elsewhere").output_dir == "elsewhere"
