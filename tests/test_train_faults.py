"""Training runs never lose or overwrite work silently: an occupied output folder is refused, checkpoints are
written atomically, and a damaged checkpoint is named and skipped."""

from __future__ import annotations

import pytest

from cm2_env.data import load_dialogues
from tests.support.tiny_models import micro_config, micro_model_dir
from train.checkpoint import CheckpointError, list_checkpoints, resolve_resume
from train.config import ConfigError
from train.grpo import train


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return micro_model_dir(tmp_path_factory.mktemp("micro"), seed=4)


def config(model_dir, out, **changes):
    return micro_config(model_dir, out, **{**dict(steps=2, group_size=2, prompts_per_step=1, max_new_tokens=6,
                                                  kl_coef=0.0, keep_checkpoints=1, seed=1), **changes})


DIALOGUES = load_dialogues("tooltalk")[:1]


def test_an_output_folder_holding_a_run_is_refused_without_resume_or_overwrite(model_dir, tmp_path):
    train(config(model_dir, tmp_path, steps=3), dialogues=DIALOGUES)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003"]
    with pytest.raises(ConfigError, match="already holds a run.*--resume auto.*--overwrite"):
        train(config(model_dir, tmp_path), dialogues=DIALOGUES)
    result = train(config(model_dir, tmp_path), dialogues=DIALOGUES, overwrite=True)
    # the old run's step-3 checkpoint is gone; pruning kept the new run's own newest checkpoint
    assert result.steps_done == 2 and [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_a_damaged_newest_checkpoint_is_named_and_resume_falls_back_to_the_previous_one(model_dir, tmp_path,
                                                                                        capsys):
    train(config(model_dir, tmp_path, steps=3, keep_checkpoints=3), dialogues=DIALOGUES, max_steps=2)
    newest = list_checkpoints(tmp_path)[-1]
    (newest / "trainer_state.json").write_text('{"step": 2, "data_pos')  # truncated
    warnings = []
    assert resolve_resume("auto", tmp_path, warn=warnings.append).name == "step-000001"
    assert "trainer_state.json" in warnings[0] and str(newest) in warnings[0]
    with pytest.raises(CheckpointError, match="trainer_state.json"):
        resolve_resume(str(newest), tmp_path)
    result = train(config(model_dir, tmp_path, steps=3, keep_checkpoints=3, resume="auto"), dialogues=DIALOGUES)
    assert result.steps_done == 3 and "skipping a damaged checkpoint" in capsys.readouterr().err


def test_a_checkpoint_interrupted_mid_save_is_never_taken_for_a_complete_one(model_dir, tmp_path):
    train(config(model_dir, tmp_path, steps=2, keep_checkpoints=2), dialogues=DIALOGUES, max_steps=1)
    partial = tmp_path / "checkpoints" / "step-000002.partial"
    partial.mkdir()
    (partial / "trainer_state.json").write_text('{"step": 2, "data_position": 2}')
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001"]
    assert resolve_resume("auto", tmp_path).name == "step-000001"
