"""The checklist-judge contract.

A judge decides, after an agent action, which of the current turn's checklist items the transcript prefix
satisfies. The environment only asks about items that can still change (satisfaction is sticky) and keeps the
verdict history; the judge is stateless across requests except for caches. ``judge`` never raises on backend
failure: an item whose verdict could not be obtained gets ``passed=None`` and an ``error``; the environment
then marks the episode failed (the trainer excludes it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

from cm2_env.data.models import ChecklistItem, Dialogue
from cm2_env.data.turns import turn_complete


@dataclass(frozen=True)
class JudgeRequest:
    """What a judge sees for one (action, items) question.

    dialogue: the reference dialogue (tools, evidence context).
    turn: 0-based turn index; action: 1-based index of the agent action in the turn just taken.
    items: the items to decide (not yet satisfied ones).
    history: OpenAI messages before the current turn (system prompt and earlier turns, as the agent saw them).
    current: the current turn's messages up to and including the action and its tool responses (user first).
    """

    dialogue: Dialogue
    turn: int
    action: int
    items: Sequence[ChecklistItem]
    history: Sequence[dict[str, Any]]
    current: Sequence[dict[str, Any]]

    @property
    def turn_complete(self) -> bool:
        """The current turn has its final reply (:func:`cm2_env.data.turns.turn_complete`, the one definition
        the environment uses too). A malformed or invalid call is never a final reply."""
        return turn_complete(self.current)


@dataclass(frozen=True)
class Verdict:
    """The decision on one item: ``passed`` True/False, or None with ``error`` when it could not be decided.

    source: which judge decided ("rule" or "llm"); agreement: share of votes agreeing with the majority when
    the judge voted several times (1.0 for a single vote); details: short analysis fields, if any.
    """

    item_id: str
    passed: bool | None
    source: Literal["rule", "llm"] = "rule"
    error: str | None = None
    agreement: float = 1.0
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ChecklistJudge(Protocol):
    """Decides checklist items on transcript prefixes."""

    async def judge(self, request: JudgeRequest) -> dict[str, Verdict]:
        """One verdict per requested item id."""
        ...

    def usage(self) -> dict[str, Any]:
        """Accounting: requests, LLM calls, tokens, errors (no timings in what the env exposes)."""
        ...


@dataclass
class Judgement:
    """One request's answer as the environment and the calibration harness both read it: ``passed`` (item id
    -> the source that passed it), ``sources`` (item id -> source, every decided item), ``decided`` (item id ->
    its :class:`Verdict`) and ``undecided`` (item id -> why not: a missing verdict, ``passed`` that is not a
    bool, or the judge's error)."""

    passed: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    decided: dict[str, Verdict] = field(default_factory=dict)
    undecided: dict[str, str] = field(default_factory=dict)


def read_verdicts(items: Sequence[ChecklistItem], verdicts: Any) -> Judgement:
    """Read a judge's answer to a request about ``items``: only a :class:`Verdict`-like object whose ``passed``
    is a bool decides an item; anything else (no entry, ``None``, a non-dict answer) leaves it undecided."""
    judgement = Judgement()
    for item in items:
        verdict = verdicts.get(item.id) if isinstance(verdicts, dict) else None
        if not isinstance(getattr(verdict, "passed", None), bool):
            judgement.undecided[item.id] = ("no verdict" if verdict is None
                                            else getattr(verdict, "error", None) or "undecided verdict")
            continue
        source = str(getattr(verdict, "source", "llm"))
        judgement.decided[item.id] = verdict
        judgement.sources[item.id] = source
        if verdict.passed:
            judgement.passed[item.id] = source
    return judgement


async def judge_all(judge: ChecklistJudge, requests: Sequence[JudgeRequest]) -> list[Judgement]:
    """Ask ``judge`` every request (concurrently when there are several, e.g. one per checklist variant) and read
    each answer with :func:`read_verdicts`. This is the one per-action judging step: the environment and the
    calibration harness both call it on the items that are still pending (satisfaction is sticky). An exception
    of the judge propagates (the caller decides whether it fails an episode or a case)."""
    if len(requests) == 1:
        answers = [await judge.judge(requests[0])]
    else:
        answers = await asyncio.gather(*(judge.judge(request) for request in requests))
    return [read_verdicts(request.items, answer) for request, answer in zip(requests, answers)]
