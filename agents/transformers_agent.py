"""A local transformers model as a policy, with generation batched across concurrent episodes.

Many episodes call :meth:`TransformersAgent.act` concurrently from one event loop; the calls queue up and a
single worker runs them through ``model.generate`` in batches (left padding) on a worker thread, so the event
loop stays free for simulator and judge I/O. Every action records its exact token bookkeeping (docs/training.md,
"How a step works"): the prompt ids the chat template produced, the generated ids (ending with the EOS token
when generation stopped there) and the log-probability of each generated id under the sampling distribution
(log-softmax of logits / temperature, before top-p truncation). The trainer trains on exactly these ids and never
re-tokenises text.

Sampling is seeded per action (:mod:`agents.token_path`): an action's draws depend on its ``sampling_seed`` alone,
never on which other requests share its batch, so the same seeds give the same actions whatever the timing.
"""

from __future__ import annotations

from typing import Any

from agents.token_agent import BatchedTokenAgent
from agents.token_path import SeededSampler


class TransformersAgent(BatchedTokenAgent):
    """Policy backed by a local ``transformers`` causal LM and its tokenizer (chat template with tools); the
    prompt, seeding and batching rules are :class:`agents.token_agent.TokenAgent`'s. torch's global generator is
    never used."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_batch_size: int = 64,
        max_prompt_tokens: int | None = None,
        seed: int | None = None,
    ):
        super().__init__(tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                         max_batch_size=max_batch_size, max_prompt_tokens=max_prompt_tokens, seed=seed)
        self.model = model

    def _generate(self, prompts: list[list[int]], seeds: list[int]) -> list[tuple[list[int], list[float]]]:
        return generate_seeded(self.model, prompts, seeds, max_new_tokens=self.max_new_tokens,
                               temperature=self.temperature, top_p=self.top_p, eos_id=self.eos_id,
                               pad_id=self.pad_id)


def cache_keyword(model: Any) -> str:
    """The name of ``model.forward``'s KV-cache argument: transformers renamed ``past_key_values`` to ``cache``.
    A PEFT wrapper passes keywords through to the model it wraps, so that model's signature decides."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def prefix_groups(prompts: list[list[int]], min_shared: int = 16) -> list[tuple[list[int], int]]:
    """Rows that start alike, as ``(row indices, shared)``: the rows' first ``shared`` tokens are identical, and
    ``shared`` is below every member's length (its last token is left to ``generate``). Rows are grouped in sorted
    order while they share at least ``min_shared`` tokens and at least half of what the group shares so far; a row
    alike with no other forms a group of one (``shared`` = its length - 1)."""
    groups: list[tuple[list[int], int]] = []
    for i in sorted(range(len(prompts)), key=lambda i: prompts[i]):
        prompt = prompts[i]
        if groups:
            members, shared = groups[-1]
            head, cap = prompts[members[0]], min(shared, len(prompt) - 1)
            n = 0
            while n < cap and head[n] == prompt[n]:
                n += 1
            if n >= min_shared and 2 * n >= shared:
                groups[-1] = (members + [i], n)
                continue
        groups.append(([i], len(prompt) - 1))
    return groups


def shared_prompt_cache(model: Any, prompts: list[list[int]], input_ids: Any, attention: Any) -> dict[str, Any]:
    """Prefill the prompts of a left-padded batch sharing their common prefixes: ``{cache keyword: cache}`` with
    every row's keys and values for all positions but the last, for ``generate`` to continue from, or ``{}`` when
    sharing would not save at least a fifth of the prefill.

    The G members of a group start from the same prompt, and their later prompts still share it: each group of
    :func:`prefix_groups` encodes its shared prefix once; the copies go to each row's columns (after its left
    padding), and one batched forward encodes the rest of every row on top of them. Positions follow the left
    padding exactly as ``generate`` numbers them, so each row sees the same tokens at the same positions as
    without the cache -- the logits differ only by float rounding.
    """
    import torch
    from transformers import DynamicCache

    width = input_ids.shape[1]
    groups = prefix_groups(prompts)
    rest = max(len(prompts[i]) - 1 - shared for members, shared in groups for i in members)
    cached = width - 1 - rest  # columns every row can take from its group's prefix (or its own padding)
    if cached <= 0 or sum(shared for _, shared in groups) + len(prompts) * rest > 0.8 * len(prompts) * (width - 1):
        return {}
    keyword = cache_keyword(model)
    device = input_ids.device
    keys: list[Any] = []
    values: list[Any] = []
    for members, shared in groups:
        if shared < 1:
            continue  # one-token prompts: nothing to encode ahead (their columns are all padding)
        prefix = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([prompts[members[0]][:shared]], device=device), use_cache=True,
              logits_to_keep=1, **{keyword: prefix})
        if any(type(layer).__name__ != "DynamicLayer" for layer in prefix.layers):
            return {}  # sliding-window or other caches: keep generate's own prefill
        if not keys:
            keys = [layer.keys.new_zeros((len(prompts), *layer.keys.shape[1:2], cached, layer.keys.shape[3]))
                    for layer in prefix.layers]
            values = [layer.values.new_zeros((len(prompts), *layer.values.shape[1:2], cached,
                                               layer.values.shape[3])) for layer in prefix.layers]
        for i in members:
            pad = width - len(prompts[i])
            if pad < cached:
                for k, layer in enumerate(prefix.layers):
                    keys[k][i, :, pad:cached] = layer.keys[0, :, : cached - pad]
                    values[k][i, :, pad:cached] = layer.values[0, :, : cached - pad]
    cache = DynamicCache(config=model.config)
    for k, (key, value) in enumerate(zip(keys, values)):
        cache.update(key, value, k)
    if rest > 0:
        mask = attention[:, : width - 1]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        model(input_ids=input_ids[:, cached: width - 1], attention_mask=mask, position_ids=positions[:, cached:],
              use_cache=True, logits_to_keep=1, **{keyword: cache})
    return {keyword: cache}


def generate_seeded(model: Any, prompts: list[list[int]], seeds: list[int], *, max_new_tokens: int,
                    temperature: float, top_p: float, eos_id: int, pad_id: int,
                    min_new_tokens: int = 0) -> list[tuple[list[int], list[float]]]:
    """``(completion ids, logprobs)`` per prompt: ``model.generate`` (left padding) with every token chosen by the
    seeded sampler (:class:`agents.token_path.SeededSampler`), each completion cut after ``eos_id``.
    ``min_new_tokens`` (throughput measurements only) bans ``eos_id`` until then: the recorded logprobs are then
    those of the restricted distribution."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    width = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        input_ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        attention[i, width - len(prompt):] = 1
    sampler = SeededSampler(seeds, width, temperature, top_p)
    # A clean generation config: none of the model's own defaults (top_k, repetition penalty...) may change the
    # distribution the trainer recomputes. The sampler picks every token; generate() then takes its argmax.
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens or None,
                              eos_token_id=eos_id, pad_token_id=pad_id)
    was_training = model.training
    model.eval()
    input_ids, attention = input_ids.to(device), attention.to(device)
    with torch.no_grad():
        shared = shared_prompt_cache(model, prompts, input_ids, attention)
        sequences = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config,
                                   logits_processor=LogitsProcessorList([sampler]), **shared)
    if was_training:
        model.train()
    generated = sequences[:, width:]
    tokens, logprobs = sampler.recorded(generated.shape[1])
    emitted = generated != pad_id
    if not torch.equal(tokens.to(generated.device)[emitted], generated[emitted]):
        raise RuntimeError("generate() did not emit the tokens the seeded sampler chose; a logits processor of the "
                           "model's generation config may interfere")
    results = []
    for row, row_logprobs in zip(generated.cpu().tolist(), logprobs.float().cpu().tolist()):
        end = row.index(eos_id) + 1 if eos_id in row else len(row)
        results.append((row[:end], row_logprobs[:end]))
    return results
