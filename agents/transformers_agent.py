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

import asyncio
from dataclasses import dataclass
from typing import Any, Mapping

from agents.base import AgentStep, ContextLimitExceeded
from agents.token_path import SeededSampler, sampling_seed
from agents.token_path import eos_token_id, pad_token_id, prompt_ids
from cm2_env.toolcalls import parse, to_assistant_message


@dataclass
class _Request:
    prompt_ids: list[int]
    seed: int
    future: asyncio.Future


class TransformersAgent:
    """Policy backed by a local ``transformers`` causal LM and its tokenizer (chat template with tools).

    temperature 0 means greedy decoding (logprobs are then plain log-softmax). A prompt longer than
    ``max_prompt_tokens`` raises :class:`~agents.base.ContextLimitExceeded` (the rollout engine then ends the
    episode as truncated): cutting it would silently drop the system prompt and tools.

    Each action samples with its own seed: ``context["sampling_seed"]`` when the caller gives one (the rollout
    engine does: a function of rollout seed, dialogue, group member and action index), otherwise a seed derived
    from ``seed`` and the number of ``act`` calls so far -- reproducible only when calls arrive in the same order.
    torch's global generator is never used.
    """

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
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.max_batch_size = max_batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.eos_id = eos_token_id(tokenizer)
        self.pad_id = pad_token_id(tokenizer)
        self._queue: list[_Request] = []
        self._worker: asyncio.Task | None = None
        self.batches: list[int] = []  # sizes of the generate() batches run, for tests and metrics
        self.seed = 0 if seed is None else int(seed)
        self._calls = 0

    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        """The chat-template token ids of ``messages`` + tools, ending with the assistant generation prompt."""
        ids = prompt_ids(self.tokenizer, messages, tools)
        if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
            raise ContextLimitExceeded(f"the prompt has {len(ids)} tokens; max_prompt_tokens is "
                                       f"{self.max_prompt_tokens}")
        return ids

    async def act(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        context: Mapping[str, Any] | None = None,
    ) -> AgentStep:
        prompt = self.prompt_ids(messages, tools)
        seed = (context or {}).get("sampling_seed")
        if seed is None:
            seed = sampling_seed("agent", self.seed, self._calls)
        self._calls += 1
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(prompt, int(seed), future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        completion, logprobs = await future
        text = self.tokenizer.decode(
            [t for t in completion if t != self.eos_id], skip_special_tokens=False
        )
        # Keep the markup tokens (<tool_call>, <think>) but drop padding-like special tokens that may be emitted.
        for special in ("<|endoftext|>", "<|im_start|>"):
            text = text.replace(special, "")
        message = to_assistant_message(parse(text))
        return AgentStep(
            text=text,
            message=message,
            prompt_ids=prompt,
            completion_ids=completion,
            logprobs=logprobs,
            usage={"prompt_tokens": len(prompt), "completion_tokens": len(completion)},
        )

    async def _drain(self) -> None:
        # Yield once so that every episode that is ready to act in this loop iteration can enqueue first.
        await asyncio.sleep(0)
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch_size], self._queue[self.max_batch_size :]
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Request]) -> None:
        """Generate for ``batch``; when that fails (out of memory, a bad request), split it in halves and try
        again, so that a failure reaches only the requests that cause it. Seeded sampling makes the halves'
        samples the same as the whole batch's would have been."""
        try:
            results = await asyncio.to_thread(self._generate, [r.prompt_ids for r in batch], [r.seed for r in batch])
        except Exception as exc:  # noqa: BLE001 - surfaced in the act() calls it concerns
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            half = len(batch) // 2
            await self._run_batch(batch[:half])
            await self._run_batch(batch[half:])
            return
        for request, result in zip(batch, results):
            if not request.future.done():
                request.future.set_result(result)

    def _generate(self, prompts: list[list[int]], seeds: list[int]) -> list[tuple[list[int], list[float]]]:
        self.batches.append(len(prompts))
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
