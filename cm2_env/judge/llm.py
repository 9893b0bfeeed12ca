"""LLMChecklistJudge: checklist items decided by an LLM with the paper's prompt structure.

Contract: ``await judge.judge(request)`` returns one :class:`Verdict` per requested item and never raises. The
prompt (package files ``prompts/*.txt``) holds the item (question, focus, pass condition, failure examples,
evidence snippets), the conversation before the turn, the current turn up to the action, whether the turn is
complete, and the judging rules (calls written only in reasoning are invalid; a tool error invalidates the call).
The model answers strict JSON with four short analysis strings and a boolean ``answer`` (per item; with
``batch_items=True`` all items of the request go into one prompt and the answer holds one verdict per item).

- ``votes=k``: each question is asked k times (distinct ``seed`` per vote, so no two requests are identical); the
  verdict is the strict majority of the valid votes (a tie is False) and ``agreement`` the majority's share.
- Identical requests are never repeated: answers are cached by the request (prompt, sampling, vote), shared by
  concurrent askers, for the judge's lifetime (bounded by ``cache_size``).
- ``attempts``: how often a question is asked again when the answer is not parsable (released: 2); a question
  that still has no answer (or whose transport failed after the client's retries) gives
  ``Verdict(passed=None, error=...)`` - the environment marks the episode failed. Failures are never cached:
  the next episode with the same prefix asks again.
- Nothing of the transcript is cut by default: a fact late in a long tool output reaches the judge. With
  ``max_prompt_chars`` set, a prompt over that budget has its longest message texts shortened (each keeps its
  start and end around an explicit ``[... N characters cut ...]`` marker, :func:`cm2_env.text.shorten`) until it
  fits; ``usage()["cuts"]``
  counts the prompts that were cut.
- Sampling defaults (:data:`DEFAULT_SAMPLING`): the released temperature 0.6 and top_p 0.8, and room for a
  reasoning judge's thinking (``max_tokens`` 8192). Requests carry a JSON-schema ``response_format``; the client
  resends without it to servers that reject it, and the answer is then read from the text. A reasoning
  model's ``<think>`` block -- closed or cut off -- is never read as the answer.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from string import Template
from typing import Any, Sequence

from cm2_env.data.models import ChecklistItem
from cm2_env.data.turns import render_tool_calls, split_think
from cm2_env.judge.base import JudgeRequest, Verdict
from cm2_env.text import package_prompt, shorten

ANALYSIS_FIELDS = ("evidence_analysis", "focus_analysis", "pass_analysis", "failure_analysis")
#: Released judge sampling (temperature 0.6, top_p 0.8); max_tokens leaves a reasoning judge (the paper's
#: Qwen3-30B-A3B thinks before it answers) room to finish, and still bounds a runaway answer.
DEFAULT_SAMPLING: dict[str, Any] = {"temperature": 0.6, "top_p": 0.8, "max_tokens": 8192}
_VERDICT_PROPERTIES = {**{name: {"type": "string"} for name in ANALYSIS_FIELDS}, "answer": {"type": "boolean"}}
#: The JSON schemas of the two answer formats (sent as ``response_format``; servers without it get the text).
SINGLE_SCHEMA: dict[str, Any] = {"type": "object", "properties": _VERDICT_PROPERTIES,
                                 "required": [*ANALYSIS_FIELDS, "answer"], "additionalProperties": False}
BATCH_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["verdicts"], "additionalProperties": False,
    "properties": {"verdicts": {"type": "array", "items": {
        "type": "object", "properties": {"id": {"type": "string"}, **_VERDICT_PROPERTIES},
        "required": ["id", *ANALYSIS_FIELDS, "answer"], "additionalProperties": False}}}}


def prompt_template(name: str) -> Template:
    """A prompt file of this package (``prompts/NAME.txt``)."""
    return package_prompt("cm2_env.judge", name)


def render_judge_transcript(messages: Sequence[dict[str, Any]], max_chars: int | None = None) -> str:
    """Messages as labelled text blocks for the judge: reasoning, tool calls and replies of the assistant kept
    apart. ``max_chars`` (None: no limit) shortens each text to that many characters with a visible marker."""
    lines = []
    for message in messages:
        role = message.get("role")
        text = message.get("content") or ""
        if role == "assistant":
            thinking, reply = split_think(text)
            if thinking:
                lines.append(f"[assistant reasoning] {shorten(thinking, max_chars, keep_end=True)}")
            if message.get("tool_calls"):
                lines.append(f"[assistant tool calls]\n{render_tool_calls(message['tool_calls'])}")
            if reply:
                lines.append(f"[assistant reply] {shorten(reply, max_chars, keep_end=True)}")
        elif role == "tool":
            lines.append(f"[tool response: {message.get('name') or 'tool'}] {shorten(text, max_chars, keep_end=True)}")
        else:
            lines.append(f"[{role}] {shorten(text, max_chars, keep_end=True)}")
    return "\n".join(lines) if lines else "(none)"


def render_item(item: ChecklistItem) -> str:
    failures = "\n".join(f"- {f}" for f in item.failure_examples) or "- (none given)"
    evidence = "\n".join(f"- {e.from_}: {e.snippet}" for e in item.evidence) or "- (none)"
    return prompt_template("item").substitute(id=item.id, question=item.question, focus=item.focus_on,
                                              pass_condition=item.pass_condition or "(as the question says)",
                                              failure_examples=failures, evidence=evidence).strip()


def build_prompt(request: JudgeRequest, items: Sequence[ChecklistItem],
                 max_prompt_chars: int | None = None) -> tuple[list[dict[str, str]], bool]:
    """``(messages, cut)``: the chat messages asking about ``items`` (one item: the single format; several: the
    batch format), and whether message texts had to be shortened to fit ``max_prompt_chars`` (None: never)."""
    current = list(request.current)
    state = ("complete: the assistant has given its final reply" if request.turn_complete
             else "in progress: the assistant may still act before replying")
    history = [m for m in request.history if m.get("role") != "system"]
    system = [m for m in request.history if m.get("role") == "system"]
    template = prompt_template("single" if len(items) == 1 else "batch")
    system_prompt = prompt_template("system").template.strip()
    rendered_items = "\n\n".join(render_item(i) for i in items)

    def messages(limit: int | None) -> list[dict[str, str]]:
        user = template.substitute(history=render_judge_transcript([*system, *history], limit),
                                   current=render_judge_transcript(current, limit), turn_state=state,
                                   items=rendered_items)
        return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]

    full = messages(None)
    if max_prompt_chars is None or _length(full) <= max_prompt_chars:
        return full, False
    # the largest per-text limit that fits (binary search); the shortest texts stay whole
    longest = max((len(m.get("content") or "") for m in [*request.history, *current]), default=0)
    low, high = 0, longest
    while low < high:
        middle = (low + high + 1) // 2
        if _length(messages(middle)) <= max_prompt_chars:
            low = middle
        else:
            high = middle - 1
    return messages(low), True


def _length(messages: Sequence[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages)


def parse_verdicts(parsed: Any, item_ids: Sequence[str]) -> dict[str, tuple[bool, dict[str, Any]]]:
    """item id -> (answer, analysis fields) from a parsed judge answer; items without a boolean answer are left
    out. Accepts ``{"answer": ...}`` (one item), ``{"verdicts": [...]}``, a bare list, or ``{"C0": {...}}``."""
    entries: list[Any]
    if isinstance(parsed, dict) and "answer" in parsed and len(item_ids) == 1:
        entries = [{**parsed, "id": item_ids[0]}]
    elif isinstance(parsed, dict) and isinstance(parsed.get("verdicts"), list):
        entries = parsed["verdicts"]
    elif isinstance(parsed, list):
        entries = parsed
    elif isinstance(parsed, dict):
        entries = [{**v, "id": k} for k, v in parsed.items() if isinstance(v, dict)]
    else:
        return {}
    out: dict[str, tuple[bool, dict[str, Any]]] = {}
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        item_id = entry.get("id")
        if item_id not in item_ids and len(entries) == len(item_ids):
            item_id = item_ids[position]  # ids dropped or garbled, order kept
        answer = _as_bool(entry.get("answer"))
        if item_id in item_ids and answer is not None and item_id not in out:
            out[item_id] = (answer, {k: str(entry.get(k, ""))[:500] for k in ANALYSIS_FIELDS if k in entry})
    return out


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "false", "no"):
        return value.strip().lower() in ("true", "yes")
    return None


class LLMChecklistJudge:
    """See the module docstring. ``client``: a ``cm2_env.llm.ChatClient`` (its retries and timeouts apply)."""

    name = "llm"

    def __init__(self, client: Any, *, votes: int = 1, batch_items: bool = False, temperature: float | None = None,
                 top_p: float | None = None, sampling: dict[str, Any] | None = None, attempts: int = 2,
                 seed: int = 0, cache_size: int = 100_000, max_prompt_chars: int | None = None,
                 structured: bool = True, owns_client: bool = False) -> None:
        if votes < 1:
            raise ValueError(f"votes must be >= 1, got {votes}")
        if max_prompt_chars is not None and max_prompt_chars < 1:
            raise ValueError(f"max_prompt_chars must be a positive number of characters or None, got {max_prompt_chars}")
        self.client = client
        self.owns_client = owns_client  # built for this judge (make_judge): closed by aclose()
        self.votes = votes
        self.batch_items = batch_items
        self.sampling = {**DEFAULT_SAMPLING, **(sampling or {})}
        if temperature is not None:
            self.sampling["temperature"] = temperature
        if top_p is not None:
            self.sampling["top_p"] = top_p
        self.attempts = max(1, attempts)
        self.seed = seed
        self.cache_size = cache_size
        self.max_prompt_chars = max_prompt_chars
        self.structured = structured
        self._cache: OrderedDict[str, asyncio.Future[dict]] = OrderedDict()
        self._counts = {"requests": 0, "items": 0, "llm_calls": 0, "cache_hits": 0, "prompt_tokens": 0,
                        "completion_tokens": 0, "parse_failures": 0, "transport_failures": 0, "errors": 0,
                        "cuts": 0}

    async def judge(self, request: JudgeRequest) -> dict[str, Verdict]:
        self._counts["requests"] += 1
        self._counts["items"] += len(request.items)
        groups = [list(request.items)] if self.batch_items else [[item] for item in request.items]
        groups = [g for g in groups if g]
        answers = await asyncio.gather(*(self._vote(request, group, v) for group in groups
                                         for v in range(self.votes)))
        out: dict[str, Verdict] = {}
        for g, group in enumerate(groups):
            votes = answers[g * self.votes:(g + 1) * self.votes]
            for item in group:
                out[item.id] = self._majority(item.id, votes)
        return out

    def usage(self) -> dict[str, Any]:
        return dict(self._counts)

    async def aclose(self) -> None:
        """Close the LLM client if this judge owns it (a client passed in belongs to the caller)."""
        if self.owns_client and hasattr(self.client, "aclose"):
            await self.client.aclose()

    def _majority(self, item_id: str, votes: Sequence[dict]) -> Verdict:
        valid = [v["verdicts"][item_id] for v in votes if item_id in v["verdicts"]]
        if not valid:
            self._counts["errors"] += 1
            reasons = sorted({v["error"] for v in votes if v.get("error")}) or ["no verdict for this item"]
            return Verdict(item_id, None, "llm", error="; ".join(reasons)[:500])
        yes = sum(1 for answer, _ in valid if answer)
        passed = yes * 2 > len(valid)
        agreement = max(yes, len(valid) - yes) / len(valid)
        details = next(d for answer, d in valid if answer == passed) if valid else {}
        return Verdict(item_id, passed, "llm", agreement=agreement,
                       details={**details, "votes": len(valid), "yes": yes})

    async def _vote(self, request: JudgeRequest, items: list[ChecklistItem], vote: int) -> dict:
        """{"verdicts": {id: (answer, details)}, "error": str|None} for one vote on a group of items."""
        messages, cut = build_prompt(request, items, self.max_prompt_chars)
        if cut:
            self._counts["cuts"] += 1
        ids = [item.id for item in items]
        verdicts: dict[str, tuple[bool, dict]] = {}
        error = None
        for attempt in range(self.attempts):
            # seed differs per vote and attempt: votes and re-asks are distinct requests, never repeats
            sampling = {**self.sampling, "seed": self.seed + vote + 1000 * attempt}
            answer = await self._ask_cached(messages, sampling, ids)
            if answer.get("error"):
                error = answer["error"]
                if answer.get("transport"):
                    break
                continue
            verdicts.update({k: v for k, v in answer["verdicts"].items() if k in ids and k not in verdicts})
            if len(verdicts) == len(ids):
                return {"verdicts": verdicts, "error": None}
            error = "the judge's answer had no verdict for " + ", ".join(i for i in ids if i not in verdicts)
        return {"verdicts": verdicts, "error": error}

    async def _ask_cached(self, messages: list[dict[str, str]], sampling: dict[str, Any], ids: list[str]) -> dict:
        key = json.dumps([messages, sampling], sort_keys=True, ensure_ascii=False)
        future = self._cache.get(key)
        if future is not None:
            self._counts["cache_hits"] += 1
            self._cache.move_to_end(key)
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self._cache[key] = future
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        try:
            answer = await self._ask(messages, sampling, ids)
        except asyncio.CancelledError:
            self._cache.pop(key, None)
            future.cancel()
            raise
        if answer.get("error"):
            self._cache.pop(key, None)  # a failure is not an answer: a later episode with this prefix asks again
        future.set_result(answer)
        return answer

    async def _ask(self, messages: list[dict[str, str]], sampling: dict[str, Any], ids: list[str]) -> dict:
        from cm2_env.llm import LLMError, extract_json

        schema = SINGLE_SCHEMA if len(ids) == 1 else BATCH_SCHEMA
        name = "checklist_verdict" if len(ids) == 1 else "checklist_verdicts"
        response_format = {"type": "json_schema", "json_schema": {"name": name, "schema": schema}} \
            if self.structured else None
        try:
            result = await self.client.chat(messages, response_format=response_format, **sampling)
        except LLMError as exc:
            self._counts["transport_failures"] += 1
            return {"error": f"judge LLM call failed: {exc}"[:500], "transport": True}
        except Exception as exc:  # judge never raises: an unexpected client failure is a verdict error
            self._counts["transport_failures"] += 1
            return {"error": f"judge LLM call failed: {type(exc).__name__}: {exc}"[:500], "transport": True}
        self._counts["llm_calls"] += 1
        usage = getattr(result, "usage", None) or {}
        self._counts["prompt_tokens"] += int(usage.get("prompt_tokens", 0) or 0)
        self._counts["completion_tokens"] += int(usage.get("completion_tokens", 0) or 0)
        parsed = result.parsed if getattr(result, "parsed", None) is not None else extract_json(result.text or "")
        verdicts = parse_verdicts(parsed, ids)
        if not verdicts:
            self._counts["parse_failures"] += 1
            return {"error": f"unparsable judge answer: {(result.text or '')[:120]!r}", "verdicts": {}}
        return {"verdicts": verdicts, "error": None}
