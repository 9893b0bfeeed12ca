"""CoT compression: rewrite each ``<think>`` block of a dialogue shorter, leaving every other byte unchanged.

Contract of :func:`compress_dialogue` (docs/method.md, "Training recipe": reasoning compressed by an LLM):

- Every assistant message whose content is exactly one leading ``<think>...</think>`` block followed by the rest
  (the ``think_tags`` rule of :mod:`cm2_env.data.filters`) and whose thinking has at least ``min_chars``
  characters is sent on its own (``prompts/compress_*.txt``): the turn's user request as context, and the message
  as the policy would emit it (content, then its calls as Hermes ``<tool_call>`` blocks,
  :func:`cm2_env.toolcalls.render_hermes`). Blocks of one dialogue are compressed concurrently.
- A rewrite is accepted only when the answer is one ``<think>...</think>`` block whose text is non-empty, strictly
  shorter and free of tool tags, followed by a copy of everything after ``</think>`` that equals the original
  up to surrounding whitespace. Otherwise it is rejected with a reason (``changed_tool_calls``,
  ``changed_reply``, ``changed_text_outside_thinking``, ``no_single_think_block``, ``empty_thinking``,
  ``not_shorter``, ``tags_in_thinking``) and the original block is kept; ``attempts`` > 1 asks again first.
- Only the text between ``<think>`` and ``</think>`` of accepted blocks changes in the returned record (its
  surrounding whitespace is kept too): the reply, the ``tool_calls`` and every other field are the input's own
  bytes, never the model's copy.
- Thinking that a checklist item of the record quotes as evidence is left alone (``evidence_in_thinking``), so a
  valid record stays valid. Transport failures raise :class:`cm2_env.llm.LLMError`.
"""

from __future__ import annotations

import asyncio
import copy
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from cm2_env.annotate.transcript import prompt_text
from cm2_env.data.models import Dialogue
from cm2_env.data.turns import split_turns
from cm2_env.llm import LLMError
from cm2_env.toolcalls import parse, render_hermes

#: Thinking shorter than this is not worth a request.
MIN_THINK_CHARS = 120
FORBIDDEN_IN_THINKING = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
# One leading think block, no other think tag anywhere (the think_tags filter's shape).
_SINGLE_THINK = re.compile(r"^(\s*<think>)((?:(?!</?think>).)*)</think>((?:(?!</?think>).)*)$", re.DOTALL)
_FENCE = re.compile(r"^```[\w-]*\n(.*)\n```$", re.DOTALL)

BlockStatus = Literal["compressed", "rejected", "skipped"]


@dataclass
class BlockOutcome:
    """What happened to the think block of message ``message_index``; ``reason`` is empty when compressed."""

    message_index: int
    status: BlockStatus
    reason: str = ""
    chars_before: int = 0
    chars_after: int = 0
    attempts: int = 0


@dataclass
class CompressionResult:
    """The record with every accepted rewrite applied, and one outcome per assistant message with thinking."""

    dialogue_id: str
    record: dict[str, Any]
    blocks: list[BlockOutcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Flat counters for reports: ``compressed``, ``rejected:REASON``, ``skipped:REASON``, characters."""
        out: dict[str, int] = {"think_blocks": len(self.blocks), "compressed": 0, "chars_before": 0, "chars_after": 0}
        for block in self.blocks:
            key = "compressed" if block.status == "compressed" else f"{block.status}:{block.reason}"
            out[key] = out.get(key, 0) + 1
            if block.status == "compressed":
                out["chars_before"] += block.chars_before
                out["chars_after"] += block.chars_after
        return out


def build_messages(user_request: str, presented: str) -> list[dict[str, str]]:
    """The compression request for one assistant message as the policy would emit it."""
    user = prompt_text("compress_user").substitute(user=user_request, message=presented)
    return [{"role": "system", "content": prompt_text("compress_system").template.strip()},
            {"role": "user", "content": user}]


def presented_message(message: dict[str, Any]) -> str:
    """The assistant message as one text: content, then its calls as Hermes blocks (ValueError: bad call)."""
    calls = render_hermes(message.get("tool_calls") or [])
    content = message.get("content") or ""
    return f"{content.rstrip()}\n{calls}" if calls else content


def check_rewrite(presented: str, answer: str) -> tuple[str | None, str]:
    """``(new thinking, "")`` for an acceptable rewrite of ``presented``, else ``(None, reason)``. Pure."""
    original = _SINGLE_THINK.match(presented.strip())
    if original is None:
        return None, "original_not_single_think_block"
    text = answer.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    rewrite = _SINGLE_THINK.match(text)
    if rewrite is None:
        return None, "no_single_think_block"
    if rewrite.group(3).strip() != original.group(3).strip():
        return None, _what_changed(presented, text)
    thinking = rewrite.group(2).strip()
    if not thinking:
        return None, "empty_thinking"
    if any(tag in thinking for tag in FORBIDDEN_IN_THINKING):
        return None, "tags_in_thinking"
    if len(thinking) >= len(original.group(2).strip()):
        return None, "not_shorter"
    return thinking, ""


def _what_changed(presented: str, answer: str) -> str:
    before, after = parse(presented), parse(answer)
    if after.errors or [(c.name, c.arguments_json) for c in before.calls] != \
            [(c.name, c.arguments_json) for c in after.calls]:
        return "changed_tool_calls"
    if before.content != after.content:
        return "changed_reply"
    return "changed_text_outside_thinking"


def splice_thinking(content: str, thinking: str) -> str:
    """``content`` with the text of its single think block replaced by ``thinking``, keeping the block's own
    leading/trailing whitespace and every byte outside the block."""
    match = _SINGLE_THINK.match(content)
    if match is None:
        raise ValueError("content is not one leading <think> block followed by the rest")
    body = match.group(2)
    lead = body[: len(body) - len(body.lstrip())]
    trail = body[len(body.rstrip()):]
    return f"{match.group(1)}{lead}{thinking}{trail}</think>{match.group(3)}"


def _quoted_thinking(dialogue: Dialogue) -> set[tuple[int, int]]:
    """(turn, step) of every message whose thinking a checklist item uses as evidence."""
    return {(e.turn, e.step) for variant in dialogue.checklists for items in variant for item in items
            for e in item.evidence if e.from_ == "assistant.content.thinking"}


async def compress_dialogue(client: Any, dialogue: Dialogue, record: dict[str, Any] | None = None, *,
                            sampling: dict[str, Any] | None = None, min_chars: int = MIN_THINK_CHARS,
                            attempts: int = 1) -> CompressionResult:
    """Compress the thinking of ``dialogue`` (module docstring). ``record`` is the raw record to edit (default:
    the canonical record of ``dialogue``; its ``messages`` must be those of ``dialogue``); it is not mutated."""
    out = copy.deepcopy(record if record is not None else dialogue.to_record())
    messages = out["messages"]
    quoted = _quoted_thinking(dialogue)
    jobs = []
    for turn in split_turns(dialogue.messages):
        for step, message in enumerate(turn.messages):
            index = turn.start + step
            content = messages[index].get("content") if message.role == "assistant" else None
            if isinstance(content, str) and "<think>" in content:
                jobs.append(_compress_block(client, index, messages[index], turn.messages[0].text,
                                            (turn.index, step) in quoted, sampling, min_chars, attempts))
    results = await asyncio.gather(*jobs, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:  # every block has finished, so no request is left running unattended
        raise next((f for f in failures if isinstance(f, LLMError)), failures[0])
    blocks: list[BlockOutcome] = []
    for outcome, new_content in results:  # type: ignore[misc]
        blocks.append(outcome)
        if new_content is not None:
            messages[outcome.message_index]["content"] = new_content
    return CompressionResult(dialogue_id=dialogue.id, record=out, blocks=blocks)


async def _compress_block(client: Any, index: int, message: dict[str, Any], user_request: str, quoted: bool,
                          sampling: dict[str, Any] | None, min_chars: int,
                          attempts: int) -> tuple[BlockOutcome, str | None]:
    content = message["content"]
    match = _SINGLE_THINK.match(content)
    if match is None:
        return BlockOutcome(index, "skipped", "not_single_think_block"), None
    before = len(match.group(2).strip())
    if quoted:
        return BlockOutcome(index, "skipped", "evidence_in_thinking", before, before), None
    if before < min_chars:
        return BlockOutcome(index, "skipped", "short_thinking", before, before), None
    try:
        presented = presented_message(message)
    except ValueError:
        return BlockOutcome(index, "skipped", "unrenderable_tool_calls", before, before), None
    outcome = BlockOutcome(index, "rejected", chars_before=before, chars_after=before)
    for _ in range(max(attempts, 1)):
        answer = await client.chat(build_messages(user_request, presented), **(sampling or {}))
        outcome.attempts += 1
        thinking, outcome.reason = check_rewrite(presented, answer.text)
        if thinking is not None:
            outcome.status, outcome.chars_after = "compressed", len(thinking)
            return outcome, splice_thinking(content, thinking)
    return outcome, None
