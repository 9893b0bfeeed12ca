"""Checklist annotation: an annotator LLM writes the checklist of every turn from the reference trajectory.

Contract of :func:`annotate_dialogue` (docs/data_format.md, "A checklist item" and "What makes a
good checklist follows"):

1. One request per dialogue (the paper's cost model): the labeling rules (``prompts/checklist_system.txt``), the
   tools and the dialogue with every step's canonical rendering under a ``turn T, step S, SOURCE`` header
   (:mod:`cm2_env.annotate.transcript`). The answer is one JSON object ``{"turns": [{"turn": t, "items": [...]}]}``.
2. The answer is parsed with :func:`cm2_env.llm.extract_json` and checked with the project's validation rules
   (:func:`cm2_env.data.validate.validate_record` and the pydantic models): one entry per turn, weights sum to 1,
   unique ids, evidence pointers in range with verbatim snippets, dependencies on ``tool.content`` items without
   cycles. Two labeling rules are checked on top: evidence never points at the user message, and every item has
   at least one evidence pointer.
3. When problems remain, up to ``repair_rounds`` (default 1) follow-up requests send the problems back in the
   same conversation and ask for the complete corrected JSON.
4. The result holds either the canonical record with the new checklist (no problems) or the remaining problems;
   a checklist with any remaining problem is never returned as a record. Transport failures raise
   :class:`cm2_env.llm.LLMError` (the caller decides whether to retry).

Deterministic clean-up before validation, because models do it constantly and it changes no meaning: item and
evidence keys outside the format are dropped, and a turn whose weights sum to within :data:`WEIGHT_ROUNDING` of 1
(e.g. three items of 0.33) is rescaled to sum to 1. Larger deviations are problems sent back to the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from cm2_env.data.checklist_rules import WEIGHT_TOLERANCE
from cm2_env.data.io import RawRecord, parse_record
from cm2_env.data.models import Dialogue
from cm2_env.data.turns import split_turns
from cm2_env.llm import extract_json
from cm2_env.data.validate import validate_record
from cm2_env.annotate.transcript import JSON_OBJECT, prompt_text, render_dialogue, render_tools

ITEM_KEYS = ("id", "evidence", "focus_on", "question", "pass_condition", "failure_examples",
             "required_for_next_turn", "dependence", "weight")
EVIDENCE_KEYS = ("turn", "step", "from", "snippet")
#: A turn whose weights sum to 1 +- this much is rescaled instead of being sent back (rounding, e.g. 3 x 0.33).
WEIGHT_ROUNDING = 0.02
#: At most this many problems go back to the model in a repair request (the rest are summarised).
MAX_PROBLEMS_SENT = 40

_ITEM_FIELD = re.compile(r"^checklists\.(\d+)\.(\d+)\.(\d+)(?:\.(.+))?$")
_TURN_FIELD = re.compile(r"^checklists\.(\d+)\.(\d+)$")


@dataclass
class AnnotationResult:
    """What annotating one dialogue produced.

    ``record``: the canonical dialogue record with the new checklist variant, or ``None`` when problems remain.
    ``problems``: the problems of the last answer (empty iff ``record`` is set). ``first_problems``: those of the
    first answer (what a repair round was sent). ``rounds``: requests made. ``items``: items in the checklist.
    """

    dialogue_id: str
    record: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)
    first_problems: list[str] = field(default_factory=list)
    rounds: int = 0
    items: int = 0

    @property
    def ok(self) -> bool:
        return self.record is not None

    @property
    def repaired(self) -> bool:
        return self.ok and bool(self.first_problems)


def build_messages(dialogue: Dialogue, max_chars: int = 4000) -> list[dict[str, str]]:
    """The annotation request: labeling rules as the system message, tools and dialogue as the user message."""
    n_turns = len(split_turns(dialogue.messages))
    user = prompt_text("checklist_user").substitute(
        tools=render_tools(dialogue), dialogue=render_dialogue(dialogue, max_chars=max_chars),
        n_turns=n_turns, last_turn=max(n_turns - 1, 0))
    return [{"role": "system", "content": prompt_text("checklist_system").template.strip()},
            {"role": "user", "content": user}]


def repair_message(problems: Sequence[str], n_turns: int) -> dict[str, str]:
    """The follow-up user message that sends the problems of an answer back."""
    shown = [f"- {p}" for p in problems[:MAX_PROBLEMS_SENT]]
    if len(problems) > MAX_PROBLEMS_SENT:
        shown.append(f"- ... and {len(problems) - MAX_PROBLEMS_SENT} more problems of the same kinds")
    text = prompt_text("checklist_repair").substitute(problems="\n".join(shown), n_turns=n_turns)
    return {"role": "user", "content": text.strip()}


def variant_from_answer(parsed: Any, n_turns: int) -> tuple[list[Any] | None, list[str]]:
    """The per-turn item lists of a parsed answer, or ``None`` and the shape problems. Never raises.

    Accepted shapes: ``{"turns": [{"turn": t, "items": [...]}, ...]}`` (the requested one; entries are ordered by
    ``turn`` when every entry carries a distinct one), ``{"checklists"|"checklist": [[...], ...]}`` and a bare
    list of per-turn lists."""
    expected = ('answer with one JSON object {"turns": [{"turn": 0, "items": [...]}, ...]} holding one entry per '
                f'turn ({n_turns} turn(s))')
    if parsed is None:
        return None, [f"the answer is not valid JSON; {expected}"]
    entries = parsed
    if isinstance(parsed, dict):
        entries = next((parsed[key] for key in ("turns", "checklists", "checklist") if key in parsed), None)
    if not isinstance(entries, list):
        return None, [f"the answer has no list of turns; {expected}"]
    if entries and all(isinstance(e, dict) for e in entries):
        turns = [e.get("turn") for e in entries]
        if all(isinstance(t, int) and not isinstance(t, bool) for t in turns) and len(set(turns)) == len(turns):
            entries = [e for _, e in sorted(zip(turns, entries), key=lambda pair: pair[0])]
            if sorted(turns) != list(range(len(turns))):
                return None, [f"the turn numbers are {sorted(turns)}, not 0..{len(turns) - 1}; {expected}"]
        entries = [e.get("items") for e in entries]
    problems = [f"turn {t}: the items are not a JSON list; give a list of item objects"
                for t, items in enumerate(entries) if not isinstance(items, list)]
    if len(entries) != n_turns:
        problems.append(f"the answer has {len(entries)} turn entries but the dialogue has {n_turns} turn(s); "
                        "give exactly one entry per turn")
    return (None, problems) if problems else (entries, [])


def tidy_variant(variant: list[list[Any]]) -> list[list[Any]]:
    """Unknown item/evidence keys dropped and rounding-level weight sums rescaled to 1 (see the module docs)."""
    tidy = []
    for items in variant:
        turn_items = []
        for item in items:
            if isinstance(item, dict):
                item = {key: item[key] for key in ITEM_KEYS if key in item}
                if isinstance(item.get("evidence"), list):
                    item["evidence"] = [{k: e[k] for k in EVIDENCE_KEYS if k in e} if isinstance(e, dict) else e
                                        for e in item["evidence"]]
            turn_items.append(item)
        tidy.append(_rescaled(turn_items))
    return tidy


def _rescaled(items: list[Any]) -> list[Any]:
    weights = [item.get("weight") if isinstance(item, dict) else None for item in items]
    if not weights or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights):
        return items
    total = float(sum(weights))
    if abs(total - 1.0) <= WEIGHT_TOLERANCE or abs(total - 1.0) > WEIGHT_ROUNDING:
        return items  # already valid (left bit-identical), or a real mistake to send back
    return [{**item, "weight": item["weight"] / total} for item in items]


def variant_problems(record: dict[str, Any], variant_index: int) -> list[str]:
    """Every problem of checklist variant ``variant_index`` of ``record``, phrased for the annotator.

    Structural problems come from the pydantic models, semantic ones from the validation rules, plus the two
    annotation rules (evidence not on the user message, at least one evidence pointer per item)."""
    prefix = f"checklists.{variant_index}"
    fields_and_messages: list[tuple[str, str]] = []
    _, structural = parse_record("<annotation>", RawRecord(1, record))
    fields_and_messages += [(p.field, p.message) for p in structural]
    fields_and_messages += [(p.field, p.message) for p in validate_record(record)]
    fields_and_messages += list(_labeling_rule_problems(record["checklists"][variant_index], prefix))
    problems: list[str] = []
    for field_path, message in fields_and_messages:
        if field_path == prefix or field_path.startswith(prefix + "."):
            text = describe_field(field_path, record["checklists"][variant_index]) + message
            if text not in problems:
                problems.append(text)
    return problems


def _labeling_rule_problems(variant: Any, prefix: str):
    for t, items in enumerate(variant if isinstance(variant, list) else []):
        for i, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict):
                continue
            evidence = item.get("evidence")
            if evidence is None or evidence == []:
                yield (f"{prefix}.{t}.{i}.evidence", "the item has no evidence; add at least one pointer "
                       "{turn, step, from, snippet} to the assistant or tool step it was written from")
            for e, pointer in enumerate(evidence if isinstance(evidence, list) else []):
                if isinstance(pointer, dict) and pointer.get("from") == "user.content":
                    yield (f"{prefix}.{t}.{i}.evidence.{e}.from", "evidence points at the user message; point "
                           "it at the assistant or tool step that shows the item (labeling rule 2)")


def describe_field(field_path: str, variant: Any) -> str:
    """``checklists.0.1.2.weight`` -> ``"turn 1, item 2 (C2), weight: "``: a field path in the answer's terms."""
    match = _ITEM_FIELD.match(field_path)
    if match:
        t, i, rest = int(match.group(2)), int(match.group(3)), match.group(4)
        item_id = None
        try:
            item_id = variant[t][i].get("id")
        except (IndexError, KeyError, TypeError, AttributeError):
            pass
        shown = f" ({item_id})" if isinstance(item_id, str) and item_id else ""
        return f"turn {t}, item {i}{shown}" + (f", {rest}: " if rest else ": ")
    match = _TURN_FIELD.match(field_path)
    if match:
        return f"turn {int(match.group(2))}: "
    return "checklist: "


def checked_record(dialogue: Dialogue, answer_text: str, append_variant: bool) -> tuple[dict | None, list[str], int]:
    """``(canonical record, [], items)`` when the answer gives a valid checklist, else ``(None, problems, 0)``."""
    n_turns = len(split_turns(dialogue.messages))
    variant, problems = variant_from_answer(extract_json(answer_text), n_turns)
    if variant is None:
        return None, problems, 0
    base = dialogue.to_record()
    existing = list(base.get("checklists") or []) if append_variant else []
    candidate = {**base, "checklists": [*existing, tidy_variant(variant)]}
    problems = variant_problems(candidate, len(existing))
    if problems:
        return None, problems, 0
    record = Dialogue.model_validate(candidate).to_record()
    return record, [], sum(len(items) for items in record["checklists"][-1])


async def annotate_dialogue(client: Any, dialogue: Dialogue, *, sampling: dict[str, Any] | None = None,
                            repair_rounds: int = 1, append_variant: bool = False,
                            max_chars: int = 4000) -> AnnotationResult:
    """Annotate every turn of ``dialogue`` with checklist items (module docstring). ``client`` is a
    :class:`cm2_env.llm.ChatClient`; ``sampling`` goes to every request (temperature, max_tokens, ...).
    ``append_variant`` keeps the dialogue's existing checklists and adds the new one as another variant."""
    messages = build_messages(dialogue, max_chars=max_chars)
    n_turns = len(split_turns(dialogue.messages))
    result = AnnotationResult(dialogue_id=dialogue.id, record=None)
    for round_index in range(1 + max(repair_rounds, 0)):
        answer = await client.chat(messages, response_format=JSON_OBJECT, **(sampling or {}))
        result.rounds += 1
        record, problems, items = checked_record(dialogue, answer.text, append_variant)
        if round_index == 0:
            result.first_problems = problems
        if record is not None:
            result.record, result.problems, result.items = record, [], items
            return result
        result.problems = problems
        messages = [*messages, {"role": "assistant", "content": answer.text or "(empty answer)"},
                    repair_message(problems, n_turns)]
    return result
