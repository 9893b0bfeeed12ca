"""The trainable policy: loading, optional LoRA, the frozen reference, autocast, optimizer and per-token logprobs.

Everything here is model plumbing shared by SFT and GRPO; the algorithms live in :mod:`train.sft`,
:mod:`train.grpo` and :mod:`train.update`. Models are local Hugging Face folders only (no hub downloads: ``local_files_only``).
"""

from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from agents.token_path import token_logprobs


def configure_torch(config: Any) -> None:
    """Seed torch's global generator and apply the run's numerics options (docs/training.md, "Reproducibility").

    ``num_threads > 0`` fixes torch's intra-op CPU threads; ``deterministic`` makes torch use deterministic
    kernels (and cuBLAS a fixed workspace), raising where an op has none. Neither pins which vector
    instructions a CPU uses: that takes environment variables set before Python starts (the docs say which).
    """
    import os

    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(config.seed)


def load_tokenizer(path: str, chat_template: str = "") -> Any:
    """The tokenizer of a local folder, with the run's ``chat_template`` option applied
    (:func:`train.chat_templates.resolve_chat_template`; "" keeps the folder's own template)."""
    from transformers import AutoTokenizer

    from train.chat_templates import resolve_chat_template

    _require_folder(path, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    template = resolve_chat_template(chat_template)
    if template is not None:
        tokenizer.chat_template = template
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{path}: the tokenizer has no chat_template; cm2 renders prompts with the chat template "
                         "(tools included). Fix: use a chat model's tokenizer or one built by train.tiny_model")
    return tokenizer


def load_model(path: str, device: torch.device | str = "cpu") -> Any:
    from transformers import AutoModelForCausalLM

    _require_folder(path, "model")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    return model.to(device)


def _require_folder(path: str, what: str) -> None:
    if not path or not Path(path).is_dir():
        raise FileNotFoundError(f"{what} folder {path!r} does not exist. Fix: point the config at a local Hugging "
                                "Face folder (cm2 never downloads models)")


def add_lora(model: Any, r: int, alpha: int, dropout: float, target_modules: list[str]) -> Any:
    """Wrap ``model`` with LoRA adapters (peft); only the adapters train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("lora: true needs peft. Fix: pip install 'cm2[lora]'") from exc
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


class ReferencePolicy:
    """The frozen reference for the KL term: the base model with adapters disabled (LoRA), or a frozen copy."""

    def __init__(self, policy: Any):
        self._policy = policy
        self._lora = hasattr(policy, "disable_adapter")
        self._copy = None
        if not self._lora:
            self._copy = copy.deepcopy(policy).eval()
            for p in self._copy.parameters():
                p.requires_grad_(False)

    @contextlib.contextmanager
    def model(self) -> Iterator[Any]:
        if self._lora:
            with self._policy.disable_adapter():
                yield self._policy
        else:
            yield self._copy

    @property
    def frozen_copy(self) -> Any:
        """The frozen copy (None under LoRA, whose reference is the policy with its adapters off)."""
        return self._copy

    def state_dict(self) -> dict[str, Any] | None:
        return self._copy.state_dict() if self._copy is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self._copy is not None and state is not None:
            self._copy.load_state_dict(state)


def use_bf16(mode: str, device: torch.device) -> bool:
    """Whether to autocast to bf16: ``auto`` = on CUDA devices that support bf16; ``true``/``false`` force it."""
    if mode == "true":
        return True
    if mode == "false":
        return False
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    """``model``'s decoder and output projection, to run the projection on selected positions only; None for
    models without that split, and for FSDP2 models, which gather their root unit (embeddings, head) only in their
    own forward."""
    from train.distributed import is_sharded

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return None if decoder is None or head is None or is_sharded(model) else (decoder, head)


def shares_prefix(model: Any) -> bool:
    """Whether :func:`selected_logprobs` can encode a shared prompt once for ``model`` right now: the model splits
    into decoder and head (:func:`_decoder_and_head`), and no gradient checkpointing drops the prompt's keys and
    values -- transformers discards the cache of a checkpointed layer in training mode with gradients on. Callers
    budget micro-batches with the same answer (:func:`train.sequences.forward_batches`)."""
    return _decoder_and_head(model) is not None and not _checkpointing_drops_cache(model)


def _checkpointing_drops_cache(model: Any) -> bool:
    """Whether a gradient-checkpointed layer of ``model`` would discard a KV cache now (training, gradients on)."""
    return model.training and torch.is_grad_enabled() and any(
        getattr(module, "gradient_checkpointing", False) is True for module in model.modules())


def selected_logprobs(model: Any, batch: dict[str, torch.Tensor], temperature: float = 1.0,
                      with_entropy: bool = False, shared: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprobs (and entropies) of the target tokens at the loss positions, as flat vectors in batch order.

    The output projection runs only on the loss positions (``batch["loss_mask"]``): prompts are long and
    completions short, so this skips most of the vocabulary matmul and softmax. ``shared``: the rows' first
    ``shared`` tokens are identical and carry no loss (:func:`train.sequences.forward_batches`); they are encoded
    once and their keys and values expanded to every row, gradients included -- the same logprobs (up to float
    rounding) for a fraction of the compute. Where :func:`shares_prefix` says no, every row is encoded whole.
    """
    device = model_device(model)
    input_ids = batch["input_ids"].to(device)
    attention = batch["attention_mask"].to(device)
    select = batch["loss_mask"].to(device)
    targets = batch["targets"].to(device)[select]
    if bool(attention.all()):  # no padding: no mask, so attention takes the fused causal kernel
        attention = None
    split = _decoder_and_head(model)
    if split is not None and shared > 0 and not _checkpointing_drops_cache(model):  # what shares_prefix says
        decoder, head = split
        from transformers import DynamicCache

        from agents.transformers_agent import cache_keyword

        keyword, cache = cache_keyword(model), DynamicCache(config=model.config)
        decoder(input_ids=input_ids[:1, :shared], use_cache=True, **{keyword: cache})
        cache.reorder_cache(torch.zeros(len(input_ids), dtype=torch.long, device=device))  # one copy per row
        width = input_ids.shape[1]
        positions = torch.arange(shared, width, device=device).expand(len(input_ids), -1)
        hidden = decoder(input_ids=input_ids[:, shared:], attention_mask=attention, position_ids=positions,
                         use_cache=True, **{keyword: cache}).last_hidden_state
        logits = head(hidden[:, :-1][select[:, shared:]])
    elif split is not None:
        decoder, head = split
        hidden = decoder(input_ids=input_ids, attention_mask=attention).last_hidden_state
        logits = head(hidden[:, :-1][select])
    else:  # models without the decoder/head split: full logits, then select
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1][select]
    logprobs, entropy = token_logprobs(logits, targets, temperature)
    return logprobs, (entropy if with_entropy else None)


def forward_micro_batches(model: Any, sequences: Any, micro_batch_tokens: int, pad_id: int, bf16: bool,
                          temperature: float = 1.0, with_entropy: bool = False,
                          mine: Callable[[int], bool] | None = None,
                          balanced_to: int = 0) -> Iterator[tuple[Any, ...]]:
    """The one micro-batch forward loop of SFT and GRPO: for each micro-batch of at most ``micro_batch_tokens``
    padded tokens, yields ``(indices, batch, logprobs, entropy)`` -- the sequences' indices, the collated batch,
    and the logprobs (and entropies) of its loss tokens (:func:`selected_logprobs`, under bf16 autocast when on).
    Gradients flow unless the caller runs it under ``torch.no_grad()``. ``mine(k)``: whether this process runs
    micro-batch ``k`` (data parallelism splits the same micro-batches over the ranks; default all).
    ``balanced_to``: run at least this many forward passes, padding with the first micro-batch yielded with no
    indices (FSDP2: every rank must run as many collective forwards as the others; the caller gives such a
    pass zero loss)."""
    from train.sequences import collate, forward_batches

    device = model_device(model)
    groups = forward_batches(sequences, micro_batch_tokens, share=shares_prefix(model))
    runs = [(indices, indices, shared) for number, (indices, shared) in enumerate(groups)
            if mine is None or mine(number)]
    runs += [(groups[0][0], [], groups[0][1])] * max(0, balanced_to - len(runs))
    for members, indices, shared in runs:
        batch = collate([sequences[i] for i in members], pad_id)
        with autocast(bf16, device):
            logprobs, entropy = selected_logprobs(model, batch, temperature, with_entropy=with_entropy,
                                                  shared=shared)
        yield indices, batch, logprobs, entropy


def make_optimizer(model: Any, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float,
                   kind: str) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_ratio * total_steps`` optimizer steps, then constant / linear / cosine to 0."""
    warmup = int(round(warmup_ratio * total_steps))
    total = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "linear":
            return 1.0 - progress
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
