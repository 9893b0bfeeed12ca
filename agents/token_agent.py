"""What every trainable (token-level) policy shares: chat-template prompt ids in, sampled ids and logprobs out.

A token agent renders the visible history with the tokenizer's chat template (:func:`agents.token_path.prompt_ids`),
asks its sampler for a completion of exactly those ids under the action's seed, and turns the completion into an
:class:`~agents.base.AgentStep` with the full token bookkeeping (docs/training.md, "How a step works"). The
samplers differ only in where the tokens come from:

- :class:`~agents.transformers_agent.TransformersAgent`: ``model.generate`` in this process;
- :class:`~agents.vllm_agent.VLLMAgent`: a ``vllm.LLM`` engine in this process;
- :class:`~agents.vllm_agent.RemoteVLLMAgent`: one or more vLLM servers, sent the prompt ids.

:class:`BatchedTokenAgent` adds the batching of an in-process sampler: concurrent ``act`` calls queue up and one
worker runs them through ``_generate`` in batches on a worker thread, so the event loop stays free for simulator
and judge I/O.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Mapping

from agents.base import AgentStep, ContextLimitExceeded
from agents.token_path import eos_token_id, pad_token_id, prompt_ids, sampling_seed
from cm2_env.toolcalls import parse, to_assistant_message

#: Special tokens a completion may emit that are not part of the action's text (markup such as <tool_call> and
#: <think> is kept).
_DROPPED_SPECIALS = ("<|endoftext|>", "<|im_start|>")


class TokenAgent:
    """The common part (module docstring). ``temperature`` 0 means greedy decoding. A prompt longer than
    ``max_prompt_tokens`` raises :class:`~agents.base.ContextLimitExceeded` (the rollout engine then ends the
    episode as truncated): cutting it would silently drop the system prompt and tools.

    Each action samples with its own seed: ``context["sampling_seed"]`` when the caller gives one (the rollout
    engine does: a function of rollout seed, dialogue, group member and action index), otherwise a seed derived
    from ``seed`` and the number of ``act`` calls so far -- reproducible only when calls arrive in the same order.
    """

    def __init__(self, tokenizer: Any, *, max_new_tokens: int = 256, temperature: float = 1.0, top_p: float = 1.0,
                 max_prompt_tokens: int | None = None, seed: int | None = None):
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.max_prompt_tokens = max_prompt_tokens
        self.eos_id = eos_token_id(tokenizer)
        self.pad_id = pad_token_id(tokenizer)
        self.seed = 0 if seed is None else int(seed)
        self._calls = 0
        #: seconds spent rendering prompts (chat template + tokenizer), for profiles; batched agents add the
        #: seconds spent sampling (remote ones sample concurrently: no serial figure to add)
        self.seconds = {"prompt": 0.0}

    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        """The chat-template token ids of ``messages`` + tools, ending with the assistant generation prompt."""
        ids = prompt_ids(self.tokenizer, messages, tools)
        if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
            raise ContextLimitExceeded(f"the prompt has {len(ids)} tokens; max_prompt_tokens is "
                                       f"{self.max_prompt_tokens}")
        return ids

    async def act(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                  context: Mapping[str, Any] | None = None) -> AgentStep:
        started = time.perf_counter()
        prompt = self.prompt_ids(messages, tools)
        self.seconds["prompt"] += time.perf_counter() - started
        seed = (context or {}).get("sampling_seed")
        if seed is None:
            seed = sampling_seed("agent", self.seed, self._calls)
        self._calls += 1
        completion, logprobs = await self._sample(prompt, int(seed))
        text = self.tokenizer.decode([t for t in completion if t != self.eos_id], skip_special_tokens=False)
        for special in _DROPPED_SPECIALS:
            text = text.replace(special, "")
        return AgentStep(text=text, message=to_assistant_message(parse(text)), prompt_ids=prompt,
                         completion_ids=completion, logprobs=logprobs,
                         usage={"prompt_tokens": len(prompt), "completion_tokens": len(completion)})

    async def _sample(self, prompt: list[int], seed: int) -> tuple[list[int], list[float]]:
        """``(completion ids, logprobs)`` of one action: the ids end with ``eos_id`` when generation stopped
        there, and ``logprobs[i]`` is log p(id i) under softmax(logits / temperature)."""
        raise NotImplementedError


@dataclass
class _Request:
    prompt_ids: list[int]
    seed: int
    future: asyncio.Future


class BatchedTokenAgent(TokenAgent):
    """A :class:`TokenAgent` whose sampler runs in this process: ``_generate(prompts, seeds)`` is called with up to
    ``max_batch_size`` queued actions at a time, on a worker thread. ``batches`` records the batch sizes."""

    def __init__(self, tokenizer: Any, *, max_batch_size: int = 64, **options: Any):
        super().__init__(tokenizer, **options)
        self.seconds["generate"] = 0.0
        self.max_batch_size = max_batch_size
        self._queue: list[_Request] = []
        self._worker: asyncio.Task | None = None
        self.batches: list[int] = []

    async def _sample(self, prompt: list[int], seed: int) -> tuple[list[int], list[float]]:
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(prompt, seed, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        # Yield once so that every episode that is ready to act in this loop iteration can enqueue first.
        await asyncio.sleep(0)
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch_size], self._queue[self.max_batch_size:]
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Request]) -> None:
        """Generate for ``batch``; when that fails (out of memory, a bad request), split it in halves and try
        again, so that a failure reaches only the requests that cause it. Seeded sampling makes the halves'
        samples the same as the whole batch's would have been."""
        try:
            results = await asyncio.to_thread(self._run_generate, [r.prompt_ids for r in batch],
                                              [r.seed for r in batch])
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

    def _run_generate(self, prompts: list[list[int]], seeds: list[int]) -> list[tuple[list[int], list[float]]]:
        self.batches.append(len(prompts))
        started = time.perf_counter()
        try:
            return self._generate(prompts, seeds)
        finally:
            self.seconds["generate"] += time.perf_counter() - started

    def _generate(self, prompts: list[list[int]], seeds: list[int]) -> list[tuple[list[int], list[float]]]:
        raise NotImplementedError
