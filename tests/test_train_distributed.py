"""Data-parallel GRPO under torchrun (train.distributed): two CPU processes (gloo) against one process on the
same global batch, and a run that loses a rank and resumes from its checkpoint -- replicated, and sharded with
FSDP2 (sharded checkpoints).

Every run is a real subprocess (``python -m train`` or ``torchrun -m train``) on a micro model; threads are
fixed to one per process so that the comparison does not depend on the machine's core count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.support.tiny_models import micro_config, micro_model_dir

pytestmark = pytest.mark.slow
TORCHRUN = Path(sys.executable).with_name("torchrun")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _config(tmp_path: Path, name: str, **changes) -> Path:
    model = tmp_path / "model"
    if not (model / "config.json").exists():
        micro_model_dir(model, seed=2)
    # 40 new tokens on seed 0: some samples of a group pass reply items that others miss, so the first update has
    # a policy-gradient signal (_assert_trained_on_advantages)
    config = micro_config(model, tmp_path / name, **{**dict(
        steps=2, group_size=2, prompts_per_step=4, max_new_tokens=40, max_turns=1, kl_coef=0.05,
        ppo_mini_batches=2, num_threads=1, seed=0), **changes})
    path = tmp_path / f"{name}.yaml"
    path.write_text(config.to_yaml())
    return path


def _command(config: Path, world: int, *extra: str) -> list[str]:
    if world == 1:
        return [sys.executable, "-m", "train", "--config", str(config), *extra]
    return [str(TORCHRUN), "--standalone", f"--nproc-per-node={world}", "-m", "train", "--config", str(config),
            *extra]


def _run(config: Path, world: int, *extra: str) -> None:
    done = subprocess.run(_command(config, world, *extra), env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


def _assert_same_weights(a: Path, b: Path, start: Path, rtol: float = 1e-3) -> None:
    """The two runs moved the weights from ``start`` by the same update, to ``rtol`` of its size.

    Not an element-wise tolerance: Adam divides each gradient by its own magnitude, so a coordinate whose gradient
    is near zero turns float-rounding differences (another summation order across ranks) into differences up to
    the learning rate. Those are few; a run that trained on something else differs by the whole update."""
    left, right, initial = _weights(a), _weights(b), _weights(start)
    assert left.keys() == right.keys() == initial.keys()
    difference = sum(float(((left[k] - right[k]) ** 2).sum()) for k in left) ** 0.5
    update = sum(float(((left[k] - initial[k]) ** 2).sum()) for k in left) ** 0.5
    assert update > 0.1, f"the runs barely trained (update norm {update}): the comparison would mean nothing"
    assert difference <= rtol * update, f"weights differ by {difference}, {difference / update:.2e} of the update"


def _assert_trained_on_advantages(out: Path) -> None:
    """The run had a policy-gradient signal: otherwise its first update is Adam applied to rounding noise (the
    KL term's gradient at the reference is zero), which no two summation orders agree on."""
    assert any(row["advantage/nonzero"] > 0 for row in _metrics(out))


def test_two_ranks_give_the_loss_and_weights_of_one_process_on_the_same_global_batch(tmp_path):
    _run(_config(tmp_path, "one"), 1)
    _run(_config(tmp_path, "two"), 2)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        assert a["reward/mean"] == b["reward/mean"]  # the same episodes: rollouts are seeded per action
        assert a["sequences"] == b["sequences"] and a["loss_tokens"] == b["loss_tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    _assert_trained_on_advantages(tmp_path / "one")
    _assert_same_weights(tmp_path / "one" / "final", tmp_path / "two" / "final", tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-000001", "step-000002"]


def test_a_run_that_loses_a_rank_resumes_from_its_checkpoint_and_ends_where_an_unbroken_run_ends(tmp_path):
    _run(_config(tmp_path, "unbroken", steps=3), 1)
    config = _config(tmp_path, "broken", steps=3)
    job = subprocess.Popen(_command(config, 2), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    first = tmp_path / "broken" / "checkpoints" / "step-000001"
    while not first.exists() and job.poll() is None:
        time.sleep(0.05)
    victim = _rank_pid(job.pid, rank=1)
    os.kill(victim, 9)
    job.communicate(timeout=600)
    assert job.returncode != 0 and not (tmp_path / "broken" / "final").exists()
    _run(config, 2, "--resume", "auto")
    _assert_trained_on_advantages(tmp_path / "unbroken")
    _assert_same_weights(tmp_path / "unbroken" / "final", tmp_path / "broken" / "final", tmp_path / "model")
    steps = [r["step"] for r in _metrics(tmp_path / "broken")]
    assert steps[-1] == 3 and sorted(set(steps)) == [1, 2, 3]


def test_fsdp2_ranks_match_one_process_and_resume_from_their_sharded_checkpoint(tmp_path):
    _run(_config(tmp_path, "unbroken", steps=3), 1)
    config = _config(tmp_path, "sharded", steps=3, data_parallel="fsdp2")
    job = subprocess.Popen(_command(config, 2), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    first = tmp_path / "sharded" / "checkpoints" / "step-000001"
    while not first.exists() and job.poll() is None:
        time.sleep(0.05)
    os.kill(_rank_pid(job.pid, rank=1), 9)
    job.communicate(timeout=600)
    assert job.returncode != 0 and not (tmp_path / "sharded" / "final").exists()
    # every rank wrote its shards; nothing holds the whole model
    assert (first / "sharded" / ".metadata").is_file() and not (first / "policy.safetensors").exists()
    assert json.loads((first / "trainer_state.json").read_text())["sharded_world"] == 2
    # a sharded checkpoint resumes on its own world size only, and says so
    refused = subprocess.run(_command(config, 1, "--resume", "auto"), env=ENV, capture_output=True, text=True,
                             timeout=600)
    assert refused.returncode != 0 and "same number of ranks" in refused.stderr
    _run(config, 2, "--resume", "auto")
    unbroken, sharded = _metrics(tmp_path / "unbroken"), _metrics(tmp_path / "sharded")
    assert sharded[-1]["step"] == 3
    for a in unbroken:
        b = [r for r in sharded if r["step"] == a["step"]][-1]
        assert a["reward/mean"] == b["reward/mean"] and a["loss_tokens"] == b["loss_tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    _assert_trained_on_advantages(tmp_path / "unbroken")
    _assert_same_weights(tmp_path / "unbroken" / "final", tmp_path / "sharded" / "final", tmp_path / "model")


def _rank_pid(parent: int, rank: int) -> int:
    """The pid of the torchrun worker with ``RANK=rank`` among ``parent``'s descendants."""
    import psutil

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for child in psutil.Process(parent).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank):
                    return child.pid
            except psutil.Error:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no worker with RANK={rank} under pid {parent}")
