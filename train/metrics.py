"""Run metrics: one JSON line per step, optional TensorBoard scalars, and a PNG reward curve.

Contract: :class:`MetricsLogger` appends ``{"step": N, ...}`` records to ``<dir>/<name>.jsonl`` (nested dicts
are flattened to ``a/b`` keys, non-numeric values are kept in the JSONL only). Opening a logger with
``resume_step=N`` first drops the records after step N, so a resumed run's file reads as one uninterrupted run.
:func:`plot_reward_curve` draws a key of such a file with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from cm2_env.records import flatten


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class MetricsLogger:
    """JSONL (always) and TensorBoard (optional) metrics of one run."""

    def __init__(self, out_dir: str | Path, name: str = "metrics", tensorboard: bool = False,
                 resume_step: int | None = None):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{name}.jsonl"
        if resume_step is not None:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        elif self.path.exists():
            self.path.unlink()
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ImportError("tensorboard: true needs the tensorboard package. Fix: pip install "
                                  "'cm2[tensorboard]' or set tensorboard: false") from exc
            self._writer = SummaryWriter(log_dir=str(self.dir / "tensorboard" / name))

    def log(self, step: int, record: Mapping[str, Any]) -> dict[str, Any]:
        flat = {"step": step, **flatten(record)}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(flat, default=_json_default) + "\n")
        if self._writer is not None:
            for key, value in flat.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()
        return flat

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class RolloutLog:
    """``rollouts.jsonl``: a step's episodes, one JSON line each (the trajectory record of ``cm2 rollout`` plus
    ``step``), for reading transcripts next to their verdicts (``cm2 view``). On resume, lines of steps after
    ``resume_step`` are dropped (the resumed run writes them again); a fresh run starts an empty file."""

    def __init__(self, out_dir: str | Path, resume_step: int | None = None):
        self.path = Path(out_dir) / "rollouts.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _step_of(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        elif resume_step is None:
            self.path.unlink(missing_ok=True)

    def write(self, step: int, episodes: Iterable[Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            for episode in episodes:
                f.write(json.dumps({"step": step, **episode.to_json()}, default=_json_default) + "\n")


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError, TypeError):
        return 1 << 62  # a broken line: dropped with the steps after the resume point


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def plot_reward_curve(records: Iterable[Mapping[str, Any]], out: str | Path, key: str = "reward/mean",
                      band: str | None = "reward/std", marks: Mapping[str, float] | None = None) -> Path:
    """Save a PNG of ``key`` against ``step`` (with a +-``band`` shade); ``marks`` draws labelled horizontal lines
    (e.g. the measured reward before and after training)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if isinstance(r.get(key), (int, float))]
    steps = [r["step"] for r in rows]
    values = [r[key] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, values, marker="o", markersize=3, label=key)
    if band and rows and all(isinstance(r.get(band), (int, float)) for r in rows):
        low = [v - r[band] for v, r in zip(values, rows)]
        high = [v + r[band] for v, r in zip(values, rows)]
        ax.fill_between(steps, low, high, alpha=0.2, label=f"± {band}")
    for label, value in (marks or {}).items():
        if value is not None:
            ax.axhline(value, linestyle="--", linewidth=1, color="gray")
            ax.annotate(f"{label} {value:.3f}", (steps[0] if steps else 0, value), fontsize=7,
                        textcoords="offset points", xytext=(2, 3))
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean checklist reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
