"""Checkpoints with exact resume: model, optimizer, scheduler, RNG states, step and data position.

Layout of ``<output_dir>/checkpoints/step-000012/``:

- ``policy.safetensors``: the trainable model's weights (all weights, or the LoRA-wrapped model's; tied weights
  are stored once);
- ``optimizer.pt``, ``scheduler.pt``: their ``state_dict``s;
- ``rng.pt``: Python ``random``, numpy and torch (CPU and every CUDA device) generator states;
- ``trainer_state.json``: ``step`` (GRPO steps completed), ``data_position`` (dialogues consumed), the config
  and free-form extras. It is written last, so a folder without it is an interrupted save and is ignored.

The frozen KL reference is not saved: it is always the model the run started from (``config.model``).
Resuming = build the run exactly as a fresh one would, then :func:`load_checkpoint` into it.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    step: int = 0  # GRPO steps completed
    data_position: int = 0  # dialogues consumed from the run's data order
    extras: dict[str, Any] = field(default_factory=dict)


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(output_dir: str | Path, state: TrainerState, model: Any, optimizer: Any, scheduler: Any,
                    config: dict[str, Any] | None = None, keep: int = 0) -> Path:
    """Write a checkpoint for ``state.step``; keep only the newest ``keep`` checkpoints (0 = keep all)."""
    from safetensors.torch import save_model

    path = checkpoint_dir(output_dir, state.step)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    save_model(model, str(path / "policy.safetensors"))
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    torch.save(scheduler.state_dict(), path / "scheduler.pt")
    torch.save(rng_states(), path / "rng.pt")
    record = {"step": state.step, "data_position": state.data_position, "extras": state.extras, "config": config}
    (path / STATE_FILE).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    if keep > 0:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / STATE_FILE).exists())


def resolve_resume(resume: str, output_dir: str | Path) -> Path | None:
    """The checkpoint folder to resume from: "" -> None, "auto" -> the latest in output_dir (or None), a path."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"resume: {path} is not a complete checkpoint (no {STATE_FILE}). Fix: point it at "
                                f"a folder under {Path(output_dir) / 'checkpoints'}, or use resume: auto")
    return path


def load_checkpoint(path: str | Path, model: Any, optimizer: Any, scheduler: Any, restore_rng: bool = True) -> TrainerState:
    """Load a checkpoint into an already built model/optimizer/scheduler; return its trainer state."""
    from safetensors.torch import load_model

    path = Path(path)
    device = next(model.parameters()).device
    load_model(model, str(path / "policy.safetensors"), device=str(device))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    if restore_rng:
        set_rng_states(torch.load(path / "rng.pt", weights_only=False))
    record = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    return TrainerState(step=record["step"], data_position=record["data_position"], extras=record.get("extras", {}))
