"""What sampling and training must agree on, in one place: end and padding tokens, prompt ids, token logprobs.

A policy's sampled tokens are trained on exactly as sampled, so the sampler (:mod:`agents.transformers_agent`
and the seeded sampling below) and the trainer (:mod:`train`) must use the same:

- :func:`eos_token_id` / :func:`pad_token_id`: the id that ends an assistant message (``<|im_end|>`` for ChatML
  templates, else the tokenizer's EOS) and the padding id (the tokenizer's, else the EOS id);
- :func:`prompt_ids`: the chat template's token ids for a conversation and its tools, with or without the
  assistant generation prompt;
- :func:`token_logprobs`: log p(token) under ``softmax(logits / temperature)`` -- the distribution the sampler
  draws from and the trainer's ratio compares against -- and the entropy, in float32.

Seeded per-action sampling: the random draws of an action depend on its key alone.

- :func:`sampling_seed` turns a key -- for rollouts ``(rollout seed, dialogue id, group member, action index)``,
  where the rollout seed is itself a function of (run seed, training step) -- into a 63-bit integer with a
  portable hash (BLAKE2b of the key's JSON; never Python's salted ``hash()``). The same key gives the same seed
  in every process and on every machine.
- :func:`token_uniforms` gives the uniform number that picks token ``i`` of an action: a counter-based draw
  (SplitMix64 of the seed and the token index), so it does not depend on which other actions share a batch, in
  which order requests were queued, or how many draws happened before.
- :func:`sample_next` picks one token per row by inverse-CDF sampling from ``softmax(logits / temperature)``
  (restricted to the top-p nucleus when ``top_p < 1``), with that row's uniform, and returns each token's
  log-probability under ``softmax(logits / temperature)`` -- the distribution the trainer recomputes (the nucleus
  cut is not applied to the logprob, as in vLLM and TRL). ``temperature <= 0`` is greedy decoding.
- :class:`SeededSampler` plugs :func:`sample_next` into ``transformers``' ``generate`` as a logits processor.

What remains nondeterministic: the logits themselves. A different batch shape (batch size, padding width) or a
CPU with other vector instructions can change logits in their last bits; a sampled token then changes only when
its uniform falls within that tiny difference of a CDF boundary (docs/training.md, "Reproducibility", gives the
measured rate; ``benchmarks/perf/sampling_determinism.py`` measures it).
"""

from __future__ import annotations

import hashlib
import json
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


# --- seeded per-action sampling ---------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def sampling_seed(*key: Any) -> int:
    """A 63-bit seed from a key of JSON-serialisable parts (ints, strings), identical in every process."""
    text = json.dumps(list(key), separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.blake2b(text.encode("ascii"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def token_uniform(seed: int, index: int) -> float:
    """The uniform draw in [0, 1) for token ``index`` of the action with ``seed`` (53 random bits)."""
    return (_splitmix64(_splitmix64(seed & _MASK64) ^ (index & _MASK64)) >> 11) * (1.0 / (1 << 53))


def token_uniforms(seeds: Sequence[int], index: int) -> list[float]:
    """:func:`token_uniform` for every row of a batch."""
    return [token_uniform(seed, index) for seed in seeds]


def sample_next(logits: Any, uniforms: Any, temperature: float, top_p: float = 1.0) -> tuple[Any, Any]:
    """``(tokens, logprobs)``: one token per row of ``logits`` (``[batch, vocab]``) and its log-probability.

    ``uniforms`` (``[batch]``, in [0, 1)) drive inverse-CDF sampling; ``temperature <= 0`` takes the argmax (first
    index on ties) and ignores them. The CDF is accumulated in float64 over the vocabulary in index order (in
    descending-probability order, ties by index, when ``top_p < 1``), so the choice is a pure function of the
    row's logits and uniform. Rows with non-finite logits are garbage in; they still return a valid index.
    """
    import torch

    from agents.token_path import token_logprobs

    logits = logits.float()
    if temperature <= 0:
        tokens = logits.argmax(dim=-1)
        return tokens, token_logprobs(logits, tokens, temperature)[0]
    probs = torch.softmax((logits / temperature).double(), dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True, stable=True)
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        probs = probs.masked_fill(before >= top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    u = torch.as_tensor(uniforms, dtype=torch.float64, device=cdf.device)
    target = (u * cdf[:, -1]).unsqueeze(-1)
    index = torch.searchsorted(cdf, target, right=True)[:, 0]
    # u * total can round up to total: never step past the last token that has probability mass.
    positions = torch.arange(cdf.shape[-1], device=cdf.device)
    last = torch.where(probs > 0, positions, torch.zeros_like(positions)).amax(dim=-1)
    index = torch.minimum(index, last)
    tokens = order.gather(-1, index[:, None])[:, 0] if order is not None else index
    return tokens, token_logprobs(logits, tokens, temperature)[0]


class SeededSampler:
    """A ``transformers`` logits processor that samples every row with its own seed (see the module docstring).

    ``generate`` runs greedily (``do_sample=False``); at each position this processor picks the row's token with
    :func:`sample_next` and its uniform :func:`token_uniform` (seed of the row, index of the token), returns
    scores that make that token the argmax, and records the token's logprob. ``prompt_width`` is the (padded)
    prompt length, so position ``input_ids.shape[1] - prompt_width`` is the index of the token being chosen.
    """

    def __init__(self, seeds: Sequence[int], prompt_width: int, temperature: float, top_p: float = 1.0):
        self.seeds = list(seeds)
        self.prompt_width = prompt_width
        self.temperature = temperature
        self.top_p = top_p
        self.tokens: dict[int, Any] = {}
        self.logprobs: dict[int, Any] = {}

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        index = int(input_ids.shape[1]) - self.prompt_width
        tokens, logprobs = sample_next(scores, token_uniforms(self.seeds, index), self.temperature, self.top_p)
        self.tokens[index], self.logprobs[index] = tokens, logprobs
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, tokens[:, None], 0.0)
        return forced

    def recorded(self, n_tokens: int) -> tuple[Any, Any]:
        """``(tokens, logprobs)`` of the first ``n_tokens`` positions, as ``[batch, n_tokens]`` tensors."""
        import torch

        if n_tokens == 0:
            empty = torch.zeros((len(self.seeds), 0))
            return empty.long(), empty
        return (torch.stack([self.tokens[i] for i in range(n_tokens)], dim=1),
                torch.stack([self.logprobs[i] for i in range(n_tokens)], dim=1))
