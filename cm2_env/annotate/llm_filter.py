"""The LLM filter of the CM2 recipe: a strict yes/no "NoError" review in successive passes of rising effort.

Contract of :func:`review_dialogue` (docs/method.md, "Training recipe"; docs/data_pipeline.md):

- The reviewer sees the tools and the whole dialogue (``prompts/review_*.txt``) and answers one JSON object
  ``{"errors": [...], "NoError": bool}``.
- Passes run one after another, in the order given (default ``low, medium, high``); pass k sends its effort as the
  sampling option ``effort_field`` (default ``reasoning_effort``, the OpenAI / vLLM name). The first ``false``
  drops the sample and later passes are not run (they could not keep it); the sample is kept only when every pass
  answers ``true``. The verdict of every pass run and the reviewer's stated errors are recorded as reasons.
- An answer without a boolean ``NoError`` is asked again (up to ``attempts`` times per pass); a pass that never
  gets one leaves the sample *undecided*, which is not a verdict about the data (the caller retries it later).
  Transport failures raise :class:`cm2_env.llm.LLMError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from cm2_env.annotate.transcript import JSON_OBJECT, prompt_text, render_dialogue, render_tools
from cm2_env.data.models import Dialogue
from cm2_env.data.turns import split_turns
from cm2_env.llm import extract_json

DEFAULT_PASSES: tuple[str, ...] = ("low", "medium", "high")
EFFORT_FIELD = "reasoning_effort"
_KEY_NORMALISER = re.compile(r"[^a-z]")
Decision = Literal["keep", "drop", "undecided"]


@dataclass
class PassVerdict:
    """One review pass: its effort, the verdict (``None``: no parsable answer), the stated errors, requests made."""

    effort: str
    no_error: bool | None
    errors: list[str] = field(default_factory=list)
    attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"effort": self.effort, "no_error": self.no_error, "errors": self.errors, "attempts": self.attempts}


@dataclass
class ReviewResult:
    """The passes run on one dialogue, in order, and the decision they imply."""

    dialogue_id: str
    passes: list[PassVerdict] = field(default_factory=list)
    requested: int = 0

    @property
    def decision(self) -> Decision:
        if any(p.no_error is False for p in self.passes):
            return "drop"
        if len(self.passes) == self.requested and all(p.no_error is True for p in self.passes):
            return "keep"
        return "undecided"

    @property
    def reasons(self) -> list[str]:
        """Why the sample was dropped (or left undecided): the failing pass and the errors it named."""
        out = []
        for verdict in self.passes:
            if verdict.no_error is False:
                named = verdict.errors or ["the reviewer answered NoError=false without naming an error"]
                out += [f"[{verdict.effort}] {error}" for error in named]
            elif verdict.no_error is None:
                out.append(f"[{verdict.effort}] no parsable NoError verdict after {verdict.attempts} request(s)")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.dialogue_id, "decision": self.decision, "reasons": self.reasons,
                "passes": [p.to_dict() for p in self.passes]}


def build_messages(dialogue: Dialogue, max_chars: int = 4000) -> list[dict[str, str]]:
    """The review request (identical in every pass; only the effort option differs)."""
    user = prompt_text("review_user").substitute(tools=render_tools(dialogue),
                                                 n_turns=len(split_turns(dialogue.messages)),
                                                 dialogue=render_dialogue(dialogue, max_chars=max_chars))
    return [{"role": "system", "content": prompt_text("review_system").template.strip()},
            {"role": "user", "content": user}]


def parse_review(parsed: Any) -> tuple[bool | None, list[str]]:
    """``(NoError, errors)`` from a parsed answer; ``NoError`` is ``None`` unless the answer holds a boolean (or
    "true"/"false") under a key spelled like NoError (``NoError``, ``no_error``, ``noError``...). Never raises."""
    if not isinstance(parsed, dict):
        return None, []
    verdict: bool | None = None
    for key, value in parsed.items():
        if isinstance(key, str) and _KEY_NORMALISER.sub("", key.lower()) == "noerror":
            if isinstance(value, bool):
                verdict = value
            elif isinstance(value, str) and value.strip().lower() in ("true", "false"):
                verdict = value.strip().lower() == "true"
            break
    errors = parsed.get("errors")
    if isinstance(errors, str):
        errors = [errors]
    named = [str(e).strip()[:500] for e in errors if str(e).strip()] if isinstance(errors, list) else []
    return verdict, named


async def review_dialogue(client: Any, dialogue: Dialogue, passes: Sequence[str] = DEFAULT_PASSES, *,
                          sampling: dict[str, Any] | None = None, attempts: int = 2,
                          effort_field: str = EFFORT_FIELD, max_chars: int = 4000) -> ReviewResult:
    """Run the review passes on ``dialogue`` (module docstring); ``client`` is a ``cm2_env.llm.ChatClient``."""
    messages = build_messages(dialogue, max_chars=max_chars)
    result = ReviewResult(dialogue_id=dialogue.id, requested=len(passes))
    for effort in passes:
        verdict = PassVerdict(effort=effort, no_error=None)
        result.passes.append(verdict)
        while verdict.no_error is None and verdict.attempts < max(attempts, 1):
            answer = await client.chat(messages, response_format=JSON_OBJECT,
                                       **{**(sampling or {}), effort_field: effort})
            verdict.attempts += 1
            verdict.no_error, verdict.errors = parse_review(extract_json(answer.text))
        if verdict.no_error is not True:
            break  # a false drops the sample; an undecided pass cannot be followed by a meaningful one
    return result
