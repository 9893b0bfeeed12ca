"""Checkpoints with exact resume: model, optimizer, scheduler, RNG states, step and data position.

Layout of ``<output_dir>/checkpoints/step-000012/``:

- ``policy.safetensors``: the trainable model's weights (all weights, or the LoRA-wrapped model's; tied weights
  are stored once);
- ``optimizer.pt``, ``scheduler.pt``: their ``state_dict``s;
- ``rng.pt``: Python ``random``, numpy and torch (CPU and every CUDA device) generator states;
- ``trainer_state.json``: ``step`` (GRPO steps completed), ``data_position`` (dialogues consumed), the config
  and free-form extras.

An FSDP2 run (``data_parallel: fsdp2``) writes ``sharded/`` instead of ``policy.safetensors`` and
``optimizer.pt``: every rank's shards of the model and optimizer state through torch.distributed.checkpoint, with
``sharded_world`` in ``trainer_state.json``. It resumes on the same number of ranks.

A checkpoint is written into ``step-000012.partial/`` and renamed into place when complete, so a crash mid-save
leaves no half-written checkpoint under its real name. ``resume: auto`` takes the newest checkpoint that reads
back; a damaged one (say, a truncated ``trainer_state.json`` copied from elsewhere) is reported by file name and
the previous one is used.

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
                    config: dict[str, Any] | None = None, keep: int = 0, dist: Any = None) -> Path:
    """Write a checkpoint for ``state.step`` (atomically: a temporary folder renamed into place); keep only the
    newest ``keep`` checkpoints (0 = keep all). A replicated model is saved by the caller on rank 0 only; an
    FSDP2 model (``dist`` = its :class:`train.distributed.Distributed`) by every rank together."""
    from safetensors.torch import save_model

    from train.distributed import Distributed, is_sharded

    sharded = is_sharded(model)
    dist = dist if sharded and dist is not None else Distributed()  # a replicated save is rank 0's alone
    path = checkpoint_dir(output_dir, state.step)
    partial = path.with_name(path.name + ".partial")
    if dist.main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(partial / "sharded"))
        dist.barrier()
    if dist.main:
        if not sharded:
            save_model(model, str(partial / "policy.safetensors"))
            torch.save(optimizer.state_dict(), partial / "optimizer.pt")
        torch.save(scheduler.state_dict(), partial / "scheduler.pt")
        torch.save(rng_states(), partial / "rng.pt")
        record = {"step": state.step, "data_position": state.data_position, "extras": state.extras, "config": config}
        if sharded:
            record["sharded_world"] = dist.world
        (partial / STATE_FILE).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
        if path.exists():
            shutil.rmtree(path)
        partial.rename(path)
        if keep > 0:
            for old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return path


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (by step number)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()
             and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name[5:]))


class CheckpointError(ValueError):
    """A checkpoint that cannot be read back; the message names the file and says what is wrong."""


def read_state(path: str | Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint folder, checked: raises :class:`CheckpointError` naming the file
    when it or one of the checkpoint's files is missing or unreadable."""
    path = Path(path)
    state_file = path / STATE_FILE
    try:
        record = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{state_file}: missing, so {path} is not a complete checkpoint") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{state_file}: unreadable ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int) \
            or not isinstance(record.get("data_position"), int):
        raise CheckpointError(f"{state_file}: needs integer 'step' and 'data_position' fields")
    files = ("sharded/.metadata", "scheduler.pt", "rng.pt") if record.get("sharded_world") else \
        ("policy.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt")
    for name in files:
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: missing, so {path} is not a complete checkpoint")
    return record


def resolve_resume(resume: str, output_dir: str | Path, warn: Any = None) -> Path | None:
    """The checkpoint folder to resume from: "" -> None; "auto" -> the newest readable one in output_dir (or None;
    damaged ones are passed to ``warn(message)`` and skipped); a path -> that folder, which must be readable."""
    if not resume:
        return None
    if resume == "auto":
        for path in reversed(list_checkpoints(output_dir)):
            try:
                read_state(path)
                return path
            except CheckpointError as exc:
                if warn is not None:
                    warn(f"skipping a damaged checkpoint: {exc}")
        return None
    path = Path(resume)
    try:
        read_state(path)
    except CheckpointError as exc:
        raise CheckpointError(f"resume: {exc}. Fix: point it at a complete folder under "
                              f"{Path(output_dir) / 'checkpoints'}, or use resume: auto") from None
    return path


def load_checkpoint(path: str | Path, model: Any, optimizer: Any, scheduler: Any, restore_rng: bool = True) -> TrainerState:
    """Load a checkpoint into an already built model/optimizer/scheduler; return its trainer state."""
    from safetensors.torch import load_model

    from train.distributed import is_sharded

    path = Path(path)
    record = read_state(path)
    device = next(model.parameters()).device
    written_by = record.get("sharded_world")
    if written_by or is_sharded(model):
        import torch.distributed as torch_dist

        world = torch_dist.get_world_size() if torch_dist.is_initialized() else 1
        if not (written_by and is_sharded(model) and written_by == world):
            what = f"an FSDP2 checkpoint of {written_by} ranks" if written_by else "a replicated checkpoint"
            raise CheckpointError(f"{path}: {what} cannot resume a run of {world} rank(s) with data_parallel "
                                  f"{'fsdp2' if is_sharded(model) else 'replicate'}. Fix: resume with the settings "
                                  "that wrote it (FSDP2 checkpoints need the same number of ranks)")
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optimizer_state = get_state_dict(model, optimizer)
        loaded = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(loaded, checkpoint_id=str(path / "sharded"))
        set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"])
    else:
        load_model(model, str(path / "policy.safetensors"), device=str(device))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    if restore_rng:
        set_rng_states(torch.load(path / "rng.pt", weights_only=False))
    return TrainerState(step=record["step"], data_position=record["data_position"], extras=record.get("extras", {}))


def previous_run(output_dir: str | Path) -> str | None:
    """What of an earlier run ``output_dir`` holds (metrics, checkpoints, final model), or None when nothing."""
    out = Path(output_dir)
    found = [name for name in ("metrics.jsonl", "checkpoints", "final") if (out / name).exists()]
    return ", ".join(found) if found else None


def clear_run(output_dir: str | Path) -> None:
    """Remove an earlier run's metrics, checkpoints and final model from ``output_dir`` (``--overwrite``)."""
    out = Path(output_dir)
    for name in ("checkpoints", "final", "tensorboard"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("metrics.jsonl", "rollouts.jsonl"):
        (out / name).unlink(missing_ok=True)
