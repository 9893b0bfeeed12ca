"""What sampling and training must agree on, in one place: end and padding tokens, prompt ids, token logprobs.

A policy's sampled tokens are trained on exactly as sampled, so the sampler (:mod:`agents.transformers_agent`,
:mod:`agents.sampling`) and the trainer (:mod:`train`) must use the same:

- :func:`eos_token_id` / :func:`pad_token_id`: the id that ends an assistant message (``<|im_end|>`` for ChatML
  templates, else the tokenizer's EOS) and the padding id (the tokenizer's, else the EOS id);
- :func:`prompt_ids`: the chat template's token ids for a conversation and its tools, with or without the
  assistant generation prompt;
- :func:`token_logprobs`: log p(token) under ``softmax(logits / temperature)`` -- the distribution the sampler
  draws from and the trainer's ratio compares against -- and the entropy, in float32.
"""

from __future__ import annotations

from typing import Any, Sequence


def eos_token_id(tokenizer: Any) -> int:
    """The id that ends an assistant message (``<|im_end|>`` for ChatML templates, else the EOS token)."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if eos is None or eos == tokenizer.unk_token_id:
        eos = tokenizer.eos_token_id
    return int(eos)


def pad_token_id(tokenizer: Any) -> int:
    """The padding id: the tokenizer's pad token, else :func:`eos_token_id`."""
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_id(tokenizer))


def prompt_ids(tokenizer: Any, messages: Sequence[dict], tools: Sequence[dict] | None,
               generation_prompt: bool = True) -> list[int]:
    """The chat template's token ids of ``messages`` and ``tools`` (ending with the assistant generation prompt
    when ``generation_prompt``)."""
    ids = tokenizer.apply_chat_template(list(messages), tools=list(tools) if tools else None,
                                        add_generation_prompt=generation_prompt, tokenize=True, return_dict=False)
    return list(ids.tolist() if hasattr(ids, "tolist") else ids)


def token_logprobs(logits: Any, targets: Any, temperature: float = 1.0) -> tuple[Any, Any]:
    """``(log p(target), entropy)`` per position under ``softmax(logits / temperature)``; ``logits``:
    ``[..., vocab]``, ``targets``: ``[...]``. ``temperature <= 0`` (greedy sampling) uses the plain logits. Entropy
    in nats; everything in float32."""
    import torch

    logits = logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    log_norm = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_norm
    entropy = log_norm - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logprobs, entropy
