"""Cold-start supervised fine-tuning on reference dialogues: loss on assistant tokens only (docs/method.md).

Contract of :func:`run_sft`: tokenise every dialogue with the tokenizer's chat template (tools included), build
exact assistant-token masks by rendering prefixes (:func:`train.sequences.dialogue_sequences`), train with AdamW
and a warmup + cosine/linear/constant schedule for ``epochs`` epochs (fractions allowed) over batches of
``batch_size`` sequences (token-mean loss per batch, gradient accumulation in micro-batches of at most
``micro_batch_tokens`` padded tokens), log the loss per optimizer step and save model + tokenizer to
``config.output_dir`` (:class:`train.config.SFTConfig`). Optionally first initialise the embeddings of the markup
tokens as the mean of related word embeddings, as the paper does for its base model
(:func:`init_special_token_embeddings`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from agents.token_path import eos_token_id, pad_token_id
from train.config import SFTConfig
from train.metrics import MetricsLogger
from train.policy import (configure_torch, forward_micro_batches, load_model, load_tokenizer,
                          make_optimizer, make_scheduler, model_device, use_bf16)
from train.sequences import TokenSequence, dialogue_sequences, epoch_order

#: docs/method.md, "Training recipe": markup tokens and the words whose embeddings they start from.
RELATED_WORDS: dict[str, tuple[str, ...]] = {
    "<think>": ("think", "begin"),
    "</think>": ("think", "finish"),
    "<tool_call>": ("tool", "call", "start"),
    "</tool_call>": ("tool", "call", "end"),
    "<|im_start|>": ("role", "enter"),
    "<|im_end|>": ("role", "exit"),
}


def init_special_token_embeddings(model: Any, tokenizer: Any,
                                  related: dict[str, Sequence[str]] = RELATED_WORDS) -> dict[str, list[str]]:
    """Set each markup token's input (and untied output) embedding to the mean of its related words' embeddings.

    A word's embedding is the mean over its sub-word tokens. Tokens missing from the vocabulary are skipped.
    Returns token -> the words used.
    """
    done: dict[str, list[str]] = {}
    inputs = model.get_input_embeddings().weight
    output_layer = model.get_output_embeddings()
    outputs = output_layer.weight if output_layer is not None and output_layer.weight is not inputs else None
    unk = tokenizer.unk_token_id
    with torch.no_grad():
        for token, words in related.items():
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == unk or token_id >= inputs.shape[0]:
                continue
            word_ids = [tokenizer.encode(w, add_special_tokens=False) for w in words]
            word_ids = [ids for ids in word_ids if ids]
            if not word_ids:
                continue
            for table in (inputs, outputs):
                if table is not None:
                    table[token_id] = torch.stack([table[ids].mean(0) for ids in word_ids]).mean(0)
            done[token] = list(words)
    return done


def sft_sequences(dialogues: Sequence[Any], tokenizer: Any, max_length: int) -> list[TokenSequence]:
    """Training sequences of reference dialogues (pydantic Dialogues or records), assistant tokens masked in."""
    eos = eos_token_id(tokenizer)
    sequences = []
    for dialogue in dialogues:
        record = dialogue.to_record() if hasattr(dialogue, "to_record") else dialogue
        sequences.extend(dialogue_sequences(record["messages"], record.get("tools"), tokenizer, eos, max_length))
    return sequences


def sft_batch_loss(model: Any, sequences: Sequence[TokenSequence], pad_id: int, micro_batch_tokens: int,
                   bf16: bool) -> tuple[float, int]:
    """Accumulate the gradient of the token-mean NLL of ``sequences`` (backward per micro-batch).

    Returns (loss, number of loss tokens). The caller steps the optimizer.
    """
    n_tokens = sum(s.n_loss_tokens for s in sequences)
    if n_tokens == 0:
        return 0.0, 0
    total = 0.0
    for _, _, logprobs, _ in forward_micro_batches(model, sequences, micro_batch_tokens, pad_id, bf16):
        loss = -logprobs.sum() / n_tokens
        loss.backward()
        total += float(loss.detach())
    return total, n_tokens


@dataclass
class SFTResult:
    model: Any
    tokenizer: Any
    out_dir: Path | None
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    initialised_tokens: dict[str, list[str]] = field(default_factory=dict)


def run_sft(
    config: SFTConfig,
    *,
    model: Any = None,
    tokenizer: Any = None,
    dialogues: Sequence[Any] | None = None,
    save: bool = True,
    on_step: Callable[[int, int, float], None] | None = None,
) -> SFTResult:
    """Cold-start SFT as configured (see the module docstring); ``model``/``tokenizer``/``dialogues`` override the
    config's paths. ``on_step(step, total_steps, loss)`` is called after every optimizer step (progress bars)."""
    from cm2_env.data import load_dialogues

    started = time.perf_counter()
    configure_torch(config)
    if tokenizer is None:
        config.require_model()
        tokenizer = load_tokenizer(config.tokenizer_path, config.chat_template)
    if model is None:
        config.require_model()
        model = load_model(config.model, "cuda" if torch.cuda.is_available() else "cpu")
    if dialogues is None:
        dialogues = load_dialogues(config.dataset)
    initialised = init_special_token_embeddings(model, tokenizer) if config.init_special_embeddings else {}
    sequences = sft_sequences(dialogues, tokenizer, config.max_length)
    if not sequences:
        raise ValueError(f"no SFT sequences: the dialogues have no assistant messages within the first "
                         f"max_length={config.max_length} tokens. Fix: raise the sft section's max_length")
    batch_size = min(config.batch_size, len(sequences))
    total_steps = max(1, math.ceil(config.epochs * len(sequences) / batch_size))
    optimizer = make_optimizer(model, config.learning_rate, config.weight_decay, config.adam_betas)
    scheduler = make_scheduler(optimizer, total_steps, config.warmup_ratio, config.lr_schedule)
    bf16 = use_bf16(config.bf16, model_device(model))
    pad = pad_token_id(tokenizer)
    out_dir = Path(config.output_dir) if save else None
    logger = MetricsLogger(out_dir, name="sft_metrics") if out_dir is not None else None
    n = len(sequences)
    result = SFTResult(model, tokenizer, out_dir, initialised_tokens=initialised)
    model.train()
    for step in range(total_steps):
        batch = [sequences[epoch_order(n, config.seed, k // n)[k % n]]
                 for k in range(step * batch_size, (step + 1) * batch_size)]
        optimizer.zero_grad(set_to_none=True)
        loss, n_tokens = sft_batch_loss(model, batch, pad, config.micro_batch_tokens, bf16)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm) \
            if config.max_grad_norm > 0 else torch.tensor(0.0)
        optimizer.step()
        scheduler.step()
        result.losses.append(loss)
        result.tokens += n_tokens
        if logger is not None:
            logger.log(step + 1, {"sft/loss": loss, "sft/lr": scheduler.get_last_lr()[0],
                                  "sft/grad_norm": float(grad_norm), "sft/loss_tokens": n_tokens})
        if on_step is not None:
            on_step(step + 1, total_steps, loss)
    result.steps = total_steps
    model.eval()
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        logger.close()
    result.seconds = time.perf_counter() - started
    return result
