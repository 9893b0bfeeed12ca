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
    with torch.no_grad():
        sequences = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                   generation_config=config, logits_processor=LogitsProcessorList([sampler]))
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
