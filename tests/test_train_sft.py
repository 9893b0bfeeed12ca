"""Cold-start SFT: exact assistant-only masks on bundled dialogues, learning, special-token initialisation,
the config file contract and `cm2 sft`."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from cm2_env.data import load_dialogues
from tests.support.tiny_models import micro_model_dir
from train.config import ConfigError, TrainConfig, load_config
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
    config = TrainConfig(model=str(model_dir), output_dir=str(tmp_path), sft_epochs=6, sft_learning_rate=3e-3,
                         sft_batch_size=3, sft_warmup_ratio=0.0, sft_lr_schedule="constant", sft_max_length=3072,
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
    config.write_text(f"model: {model_dir}\ndataset: {data}\nsft_epochs: 1\nsft_batch_size: 2\n"
                      f"sft_learning_rate: 1.0e-3\nsft_max_length: 3072\noutput_dir: {tmp_path / 'run'}\n"
                      "sft_init_special_embeddings: true\n")
    result = CliRunner().invoke(main, ["sft", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["steps"] == 1 and summary["output_dir"].endswith("sft")
    assert (tmp_path / "run" / "sft" / "model.safetensors").exists()
