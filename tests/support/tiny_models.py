"""Very small local models for training tests: built in a second or two, no download.

``micro_model_dir(path)`` writes a tokenizer (byte-level BPE on a slice of the bundled dialogues, the project's
chat template) and a 2-layer Qwen3 model with hidden size 64 to ``path`` and returns it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train.tiny_model import PRESETS, TinyShape, build_model, build_tokenizer, corpus_texts

MICRO = PRESETS["micro"]


def micro_model_dir(path: str | Path, seed: int = 0, shape: TinyShape = MICRO) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus_texts(), vocab_size=shape.vocab_size)
    model = build_model(tokenizer, shape, seed=seed)
    tokenizer.save_pretrained(path)
    model.save_pretrained(path, safe_serialization=True)
    return path


def micro_config(model_dir: Any, out: Any, **values: Any) -> Any:
    """A validated GRPOConfig for a micro-model run: the test's ``values`` over what every such run shares (fp32,
    one turn of at most two actions, lr 1e-3, a checkpoint every step, no progress bars)."""
    from train.config import GRPOConfig

    shared = dict(model=str(model_dir), output_dir=str(out), max_turns=1, max_actions_per_turn=2, learning_rate=1e-3,
                  checkpoint_interval=1, bf16="false", progress=False)
    return GRPOConfig(**{**shared, **values}).validate()
