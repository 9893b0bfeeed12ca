"""The judge-calibration evaluator: how well does a judge reproduce gold verdicts?

Contract: ``load_calibration(path)`` reads gold cases (format: cm2_env/data/bundled/calibration/README.md) and
raises ``DatasetError`` naming file, line and field for bad records. ``await evaluate(judge, cases, dialogues)``
replays every candidate as training does - after each agent action the judge is asked about the turn's items
that are not yet satisfied (satisfaction is sticky) - and returns a :class:`CalibrationReport`: accuracy,
precision/recall/F1 of "pass", per focus and per candidate kind, first-action agreement (on items passed by both,
"avoid X" items excluded, as their annotated first step is a convention), vote agreement, errors, LLM calls and
tokens. A verdict error (``passed=None``) counts as a wrong answer and is counted in ``errors``. For judges whose
verdicts carry ``details["confidence"]`` (the rule judge) it also reports the confident slice: the verdicts at or
above ``threshold`` -- what a hybrid judge with that threshold keeps -- and the share it would send to the LLM.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from cm2_env.data.io import DatasetError, Problem, read_records
from cm2_env.data.models import Dialogue
from cm2_env.data.turns import split_actions, split_turns
from cm2_env.judge.base import ChecklistJudge, JudgeRequest, judge_all
from cm2_env.judge.rule import is_avoid_item
from cm2_env.reward.incremental import TurnRewardState


def bundled_calibration_path() -> Path:
    """The calibration set shipped with the package (gold verdicts on the bundled ToolTalk dialogues)."""
    return Path(str(resources.files("cm2_env.data") / "bundled" / "calibration" / "calibration.jsonl"))


@dataclass(frozen=True)
class GoldVerdict:
    item_id: str
    passed: bool
    first_step: int | None  # 1-based position in the candidate's messages


@dataclass(frozen=True)
class CalibrationCase:
    """One candidate behaviour for one turn, with the gold verdict of each of the turn's items."""

    id: str
    dialogue_id: str
    turn: int
    kind: str
    messages: list[dict[str, Any]]
    verdicts: list[GoldVerdict]


def load_calibration(path: str | Path | None = None) -> list[CalibrationCase]:
    """Read a calibration JSONL file (default: the bundled one)."""
    path = Path(path) if path is not None else bundled_calibration_path()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such calibration file (omit --calibration for the bundled one)")
    cases, problems = [], []
    for raw in read_records(path):
        if raw.error is not None:
            problems.append(Problem(str(path), raw.line, "", "", raw.error))
            continue
        case, problem = _parse_case(raw.data)
        if problem:
            rid = raw.data.get("id", "") if isinstance(raw.data, dict) else ""
            problems.append(Problem(str(path), raw.line, str(rid), problem[0], problem[1]))
        else:
            cases.append(case)
    if problems:
        raise DatasetError(problems)
    return cases


def _parse_case(data: Any) -> tuple[CalibrationCase | None, tuple[str, str] | None]:
    if not isinstance(data, dict):
        return None, ("", "a calibration record must be a JSON object")
    for key, kind in (("id", str), ("dialogue_id", str), ("turn", int), ("messages", list), ("verdicts", list)):
        if not isinstance(data.get(key), kind):
            return None, (key, f"required field of type {kind.__name__} is missing or has another type; add it")
    verdicts = []
    for i, v in enumerate(data["verdicts"]):
        if not isinstance(v, dict) or not isinstance(v.get("id"), str) or not isinstance(v.get("passed"), bool):
            return None, (f"verdicts.{i}", 'each verdict needs "id" (str) and "passed" (bool)')
        verdicts.append(GoldVerdict(v["id"], v["passed"], v.get("first_step")))
    return CalibrationCase(data["id"], data["dialogue_id"], data["turn"], str(data.get("kind", "")),
                           data["messages"], verdicts), None


@dataclass
class Tally:
    """Counts of one slice: tp/fp/tn/fn of "pass", and verdict errors."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    errors: int = 0

    def add(self, gold: bool, predicted: bool | None) -> None:
        if predicted is None:
            self.errors += 1
            predicted = not gold  # an error is a wrong answer
        if gold:
            self.tp += predicted
            self.fn += not predicted
        else:
            self.fp += predicted
            self.tn += not predicted

    def summary(self) -> dict[str, Any]:
        n = self.tp + self.fp + self.tn + self.fn
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"n": n, "accuracy": (self.tp + self.tn) / n if n else 0.0, "precision": precision,
                "recall": recall, "f1": f1, "errors": self.errors}


@dataclass
class CaseResult:
    """A judge's sticky verdicts on one case: item -> passed (None: error) and item -> first action."""

    case: CalibrationCase
    passed: dict[str, bool | None]
    first_action: dict[str, int | None]
    agreements: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    confidence: dict[str, float] = field(default_factory=dict)  # of the deciding verdict, where judges give one


def case_request_parts(case: CalibrationCase, dialogue: Dialogue) -> tuple[list[dict], dict, list]:
    """(history, user message, actions) of a case: the reference before the turn, its user message, and the
    candidate's messages split into agent actions."""
    turns = split_turns(dialogue.messages)
    if case.turn >= len(turns):
        raise ValueError(f"{case.id}: dialogue {case.dialogue_id} has {len(turns)} turns, not turn {case.turn}")
    start = turns[case.turn].start
    history = [m.model_dump(mode="json", exclude_none=True) for m in dialogue.messages[:start]]
    user = dialogue.messages[start].model_dump(mode="json", exclude_none=True)
    return history, user, split_actions([user, *case.messages])


async def judge_case(judge: ChecklistJudge, case: CalibrationCase, dialogue: Dialogue,
                     variant: int = 0) -> CaseResult:
    """Judge a candidate after each of its actions, asking only about items not yet satisfied: the env's sticky
    judging (``TurnRewardState`` keeps what is satisfied, :func:`judge_all` asks and reads the verdicts)."""
    history, user, actions = case_request_parts(case, dialogue)
    items = list(dialogue.checklist(variant)[case.turn])
    state = TurnRewardState(items)
    failed: set[str] = set()
    result = CaseResult(case, {}, {})
    for action in actions:
        end = action.step + 1 + len(action.tool_responses)
        current = [user, *case.messages[: end - 1]]
        pending = [item for item in items if item.id not in state.satisfied]
        if not pending:
            break
        [judgement] = await judge_all(judge, [JudgeRequest(dialogue, case.turn, action.index, pending, history,
                                                           current)])
        failed.update(judgement.undecided)
        result.errors.extend(judgement.undecided.values())
        for item_id, verdict in judgement.decided.items():
            if verdict.source == "llm":
                result.agreements.append(verdict.agreement)
            confidence = (verdict.details or {}).get("confidence")
            if isinstance(confidence, (int, float)):
                result.confidence[item_id] = float(confidence)
        state.step(judgement.passed)
    for item in items:
        first = state.first_satisfied[item.id]
        passed = True if first is not None else (None if item.id in failed else False)
        result.passed[item.id], result.first_action[item.id] = passed, first
    return result


def gold_first_action(case: CalibrationCase, first_step: int | None) -> int | None:
    """The 1-based action whose messages include the candidate message at 1-based position ``first_step``."""
    if first_step is None:
        return None
    actions = split_actions([{"role": "user", "content": ""}, *case.messages])
    chosen = None
    for action in actions:
        if action.step <= first_step:
            chosen = action.index
    return chosen


@dataclass
class CalibrationReport:
    overall: dict[str, Any]
    by_focus: dict[str, dict[str, Any]]
    by_kind: dict[str, dict[str, Any]]
    first_action: dict[str, Any]
    vote_agreement: float | None
    usage: dict[str, Any]
    cases: int
    confident: dict[str, Any] | None = None  # verdicts with confidence >= threshold, and the share of the rest

    def to_dict(self) -> dict[str, Any]:
        return {**self.overall, "cases": self.cases, "by_focus": self.by_focus, "by_kind": self.by_kind,
                "first_action_agreement": self.first_action, "vote_agreement": self.vote_agreement,
                "usage": self.usage, "confident": self.confident}


def score(results: Sequence[CaseResult], dialogues: dict[str, Dialogue], usage: dict[str, Any] | None = None,
          variant: int = 0, threshold: float = 0.85) -> CalibrationReport:
    """Compare judged cases with their gold verdicts (pure)."""
    overall, by_focus, by_kind, confident = Tally(), defaultdict(Tally), defaultdict(Tally), Tally()
    unsure = 0
    first_total = first_same = 0
    agreements = [a for r in results for a in r.agreements]
    for result in results:
        case = result.case
        items = {i.id: i for i in dialogues[case.dialogue_id].checklist(variant)[case.turn]}
        for gold in case.verdicts:
            item = items.get(gold.item_id)
            predicted = result.passed.get(gold.item_id)
            overall.add(gold.passed, predicted)
            level = result.confidence.get(gold.item_id)
            if level is not None and level >= threshold:
                confident.add(gold.passed, predicted)
            elif level is not None:
                unsure += 1
            by_focus[item.focus_on if item else "?"].add(gold.passed, predicted)
            by_kind[case.kind].add(gold.passed, predicted)
            if gold.passed and predicted and item is not None and not is_avoid_item(item):
                first_total += 1
                first_same += gold_first_action(case, gold.first_step) == result.first_action.get(gold.item_id)
    return CalibrationReport(
        overall=overall.summary(),
        by_focus={k: v.summary() for k, v in sorted(by_focus.items())},
        by_kind={k: v.summary() for k, v in sorted(by_kind.items())},
        first_action={"n": first_total, "rate": first_same / first_total if first_total else None},
        vote_agreement=sum(agreements) / len(agreements) if agreements else None,
        usage=dict(usage or {}),
        cases=len(results),
        confident=({**confident.summary(), "threshold": threshold,
                    "share_below": unsure / (unsure + confident.summary()["n"])}
                   if unsure + confident.summary()["n"] else None),
    )


async def evaluate(judge: ChecklistJudge, cases: Sequence[CalibrationCase], dialogues: Sequence[Dialogue],
                   *, concurrency: int = 16, on_case: Callable[[CaseResult], None] | None = None,
                   variant: int = 0, threshold: float = 0.85) -> CalibrationReport:
    """Judge every case (``concurrency`` at a time) and score the verdicts against the gold ones."""
    by_id = {d.id: d for d in dialogues}
    missing = sorted({c.dialogue_id for c in cases} - set(by_id))
    if missing:
        raise ValueError(f"calibration cases refer to dialogues not in the dialogue set: {missing[:5]} "
                         "(pass the dialogues the calibration set was written for with --dialogues)")
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def one(case: CalibrationCase) -> CaseResult:
        async with semaphore:
            result = await judge_case(judge, case, by_id[case.dialogue_id], variant)
        if on_case is not None:
            on_case(result)
        return result

    results = await asyncio.gather(*(one(case) for case in cases))
    return score(results, by_id, judge.usage(), variant, threshold)
