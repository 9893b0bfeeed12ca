"""A local transformers model as a policy, with generation batched across concurrent episodes.

Many episodes call :meth:`TransformersAgent.act` concurrently from one event loop; the calls queue up and a
single worker runs them through ``model.generate`` in batches (left padding) on a worker thread, so the event
loop stays free for simulator and judge I/O. Every action records its exact token bookkeeping (DESIGN.md,
"Training token bookkeeping"): the prompt ids the chat template produced, the generated ids (ending with the EOS
token when generation stopped there) and the log-probability of each generated id under the sampling
distribution (log-softmax of logits / temperature, before top-p truncation). The trainer trains on exactly these
ids and never re-tokenises text.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Mapping

from agents.base import AgentStep
from cm2_env.toolcalls import parse, to_assistant_message


@dataclass
class _Request:
    prompt_ids: list[int]
    future: asyncio.Future


class TransformersAgent:
    """Policy backed by a local ``transformers`` causal LM and its tokenizer (chat template with tools).

    temperature 0 means greedy decoding (logprobs are then plain log-softmax). ``max_prompt_tokens`` keeps the
    last tokens of an over-long prompt (the system prompt and tools come first and are lost first; prefer
    datasets that fit). ``seed`` seeds torch's global generator once, at construction.
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
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.max_batch_size = max_batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if self.eos_id is None or self.eos_id == tokenizer.unk_token_id:
            self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self._queue: list[_Request] = []
        self._worker: asyncio.Task | None = None
        self.batches: list[int] = []  # sizes of the generate() batches run, for tests and metrics
        if seed is not None:
            torch.manual_seed(seed)

    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        """The chat-template token ids of ``messages`` + tools, ending with the assistant generation prompt."""
        ids = self.tokenizer.apply_chat_template(
            messages, tools=tools or None, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = list(ids)
        if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
            ids = ids[-self.max_prompt_tokens :]
        return ids

    async def act(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        context: Mapping[str, Any] | None = None,
    ) -> AgentStep:
        prompt = self.prompt_ids(messages, tools)
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(prompt, future))
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
            try:
                results = await asyncio.to_thread(self._generate, [r.prompt_ids for r in batch])
            except Exception as exc:  # surface the error in every waiting act() call
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            for request, result in zip(batch, results):
                if not request.future.done():
                    request.future.set_result(result)

    def _generate(self, prompts: list[list[int]]) -> list[tuple[list[int], list[float]]]:
        import torch

        self.batches.append(len(prompts))
        width = max(len(p) for p in prompts)
        device = next(self.model.parameters()).device
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention[i, width - len(prompt) :] = 1
        greedy = self.temperature <= 0
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                do_sample=not greedy,
                temperature=None if greedy else self.temperature,
                top_p=None if greedy else self.top_p,
                top_k=None,
                max_new_tokens=self.max_new_tokens,
                eos_token_id=self.eos_id,
                pad_token_id=self.pad_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
        if was_training:
            self.model.train()
        generated = out.sequences[:, width:].cpu()
        logits = torch.stack(out.logits, dim=1).float().cpu()  # (batch, new tokens, vocab)
        if not greedy:
            logits = logits / self.temperature
        token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, generated.unsqueeze(-1)).squeeze(-1)
        results = []
        for row, row_logprobs in zip(generated.tolist(), token_logprobs.tolist()):
            end = row.index(self.eos_id) + 1 if self.eos_id in row else len(row)
            results.append((row[:end], row_logprobs[:end]))
        return results
