"""RuleJudge: a deterministic, offline, APPROXIMATE checklist judge for machines without an LLM.

Contract: ``await RuleJudge().judge(request)`` returns one :class:`Verdict` per requested item, computed from the
item's structure and evidence alone - no model, no network, the same answer for the same input. It is an
approximation of what a careful LLM judge decides, not a replacement: it cannot read intent or paraphrase, so it
errs on wording-heavy items. Measure it with ``cm2 judge eval --judge rule`` before trusting it as a reward.
Every verdict carries ``details = {"rule": ..., "confidence": 0..1, "why": ...}``; :class:`HybridJudge` asks the
LLM only where the confidence is low.

The rules, by the item's focus:

- ``assistant.tool_calls``: the evidence points at reference calls; the item passes when the current turn has a
  call to the same tool whose arguments agree with the evidence's argument values (the arguments the snippet
  shows, less optional ones the question and pass condition do not mention).
- ``tool.content``: the evidence's tool result key values (identifiers: only their presence) appear in an
  error-free response of the same tool in the current turn; distinct reference responses need distinct matches.
- ``assistant.content.user_visible_reply`` / ``thinking``: the key values (dates, times, numbers, e-mails,
  identifiers) the item asks for appear in the text; without key values, the question's content words must.
  A reply item whose prerequisite tool results (``dependence``) are missing fails: it confirms what did not
  happen.
- "avoid X / refrain from X" items are decided when the turn has its final reply (until then they are not yet
  satisfied): a tool-call item fails when a call to a tool the item names (or describes) is not a reference call
  of the turn and, for items about invented values, uses values found nowhere in the conversation; a reply item
  fails when the reply states facts found nowhere in the conversation, or claims an action without a
  successful call.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from typing import Any

from cm2_env.data.models import ChecklistItem
from cm2_env.data.turns import render_tool_calls
from cm2_env.judge.base import JudgeRequest, Verdict
from cm2_env.judge.rule_replies import Decision, avoid_statements, text_item
from cm2_env.judge.transcript_view import TurnView
from cm2_env.judge.values import (content_words, facts, facts_and_rest, leaf_pairs, parse_fragment,
                                  time_variant_present, values_agree, words)

#: Transcripts longer than this (characters) are judged on a worker thread (see RuleJudge.judge).
OFF_LOOP_CHARS = 20_000
_NEGATIVE = re.compile(r"\b(avoid|avoided|refrain|refrained|hold off|abstain)\b", re.IGNORECASE)
_INVENTED = re.compile(r"\b(guess|guessed|invent|invented|made-up|made up|not (?:yet )?(?:provided|given|specified|"
                       r"supplied|chosen|identified|approved)|never provided|never gave)\b", re.IGNORECASE)
_ID_KEY = re.compile(r"(^|_)(id|token)s?$", re.IGNORECASE)


class RuleJudge:
    """Deterministic, offline, approximate judge (see the module docstring). Never raises."""

    name = "rule"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "items": 0, "llm_calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
                        "errors": 0}

    async def judge(self, request: JudgeRequest) -> dict[str, Verdict]:
        """The verdicts; a request over :data:`OFF_LOOP_CHARS` characters of transcript is decided on a worker
        thread, so that one huge action cannot stall the other episodes of the event loop."""
        if _transcript_chars(request) > OFF_LOOP_CHARS:
            return await asyncio.to_thread(self.judge_sync, request)
        return self.judge_sync(request)

    def judge_sync(self, request: JudgeRequest) -> dict[str, Verdict]:
        view = TurnView(request)
        out = {}
        errors = 0
        for item in request.items:
            try:
                decision = decide(item, view)
            except Exception as exc:  # a rule bug must not crash an episode; say so instead
                errors += 1
                out[item.id] = Verdict(item.id, None, "rule", error=f"rule judge failed: {exc!r}")
                continue
            out[item.id] = Verdict(item.id, decision.passed, "rule", details={
                "rule": decision.rule, "confidence": decision.confidence, "why": decision.why})
        with self._lock:  # judge_sync may run on worker threads
            self._counts["requests"] += 1
            self._counts["items"] += len(request.items)
            self._counts["errors"] += errors
        return out

    def usage(self) -> dict[str, Any]:
        return dict(self._counts)


def _transcript_chars(request: JudgeRequest) -> int:
    return sum(len(str(m.get("content") or "")) + len(json.dumps(m.get("tool_calls") or []))
               for m in request.current if isinstance(m, dict))


def is_avoid_item(item: ChecklistItem) -> bool:
    """An "avoid X / refrain from X" item: satisfied by the absence of something, so decidable at turn end."""
    return bool(_NEGATIVE.search(item.question))


def decide(item: ChecklistItem, view: TurnView) -> Decision:
    """The rule verdict on one item for the transcript prefix in ``view``."""
    if is_avoid_item(item):
        if not view.final:
            return Decision(False, 0.9, "avoid:pending", "avoid-items are decided when the turn has its reply")
        if item.focus_on == "assistant.tool_calls":
            return _avoid_calls(item, view)
        return avoid_statements(item, view)
    if item.focus_on == "assistant.tool_calls":
        return _tool_call_item(item, view)
    if item.focus_on == "tool.content":
        return _tool_result_item(item, view)
    return text_item(item, view)


# -- tool calls --------------------------------------------------------------------------------------------


def _evidence_calls(item: ChecklistItem, view: TurnView) -> list[tuple[str, dict[str, Any]]]:
    """(tool, key arguments) required by the item, from the reference calls its tool-call evidence points at.

    Key arguments are those the snippet shows and the question or pass condition talks about (by key name or
    value); when it talks about none of them, the tool's required ones.
    """
    asked = f"{item.question} {item.pass_condition}"
    wanted = []
    for evidence in item.evidence:
        if evidence.from_ != "assistant.tool_calls":
            continue
        message = view.reference_message(evidence.turn, evidence.step)
        for call in getattr(message, "calls", []) or []:
            line = render_tool_calls([call])
            arguments = call.function.parsed_arguments()
            if not isinstance(arguments, dict):
                continue
            in_snippet = evidence.snippet in line or line in evidence.snippet
            shown = {k: v for k, v in arguments.items() if f'"{k}"' in evidence.snippet}
            if not shown and not in_snippet:
                continue
            if in_snippet and (f"{call.function.name}(" in evidence.snippet or not shown):
                shown = dict(arguments)
            key_args = {k: v for k, v in shown.items() if _mentions_key(k, asked) or _mentions_value(v, asked)}
            if not key_args:
                tool = view.dialogue.tool(call.function.name)
                required = set((tool.function.parameters.get("required") or []) if tool else shown)
                key_args = {k: v for k, v in shown.items() if k in required}
            wanted.append((call.function.name, key_args))
    return wanted


def _mentions_key(key: str, text: str) -> bool:
    return bool(re.search(rf"\b{re.escape(key)}\b", text)) or (
        "_" in key and key.replace("_", " ").lower() in text.lower())


def _mentions_value(value: Any, text: str) -> bool:
    if isinstance(value, list):
        return any(_mentions_value(v, text) for v in value)
    if isinstance(value, (dict, bool)) or value is None:
        return False
    shown = str(value)
    if facts(shown) & facts(text):
        return True
    return len(shown) >= 2 and (shown.lower() in text.lower() or bool(content_words(shown) & content_words(text)))


def _agrees_as_asked(expected: Any, actual: Any, asked: str) -> bool:
    """``values_agree``, narrowed to what the item asks about: the asked dates/times of a date-time, the asked
    words of free text, the asked elements of a list (extra elements are allowed)."""
    if values_agree(expected, actual):
        return True
    if isinstance(expected, list):
        mentioned = [e for e in expected if _mentions_value(e, asked)] or expected
        actual_list = actual if isinstance(actual, list) else [actual]
        if re.search(r"\b(exactly|only)\b", asked, re.IGNORECASE) and len(actual_list) != len(mentioned):
            return False
        return all(any(_agrees_as_asked(e, a, asked) for a in actual_list) for e in mentioned)
    if not isinstance(expected, str) or not isinstance(actual, str):
        return False
    expected_facts, expected_rest = facts_and_rest(expected)
    actual_facts, actual_rest = facts_and_rest(actual)
    needed = (expected_facts & facts(asked)) or expected_facts
    if not all(f in actual_facts or (f[0] == "T" and time_variant_present(f, actual_facts)) for f in needed):
        return False
    expected_words = content_words(expected_rest)
    if expected_facts and not expected_words:
        # a pure value (date-time, number, e-mail, identifier): the asked parts must be there and nothing but
        # values may be -- a value with words appended is another value
        return not set(words(actual_rest)) - set(words(asked))
    if len(words(expected)) < 3 and not expected_facts:
        return False  # a name, password or title: only an equal value agrees (values_agree above)
    # free text (a title, a message body): paraphrase and elaboration are fine, the asked words must be there
    needed_words = (expected_words & content_words(asked)) or expected_words
    return bool(needed_words) and len(needed_words & content_words(actual_rest)) >= 0.6 * len(needed_words)


def _call_agrees(call: tuple[str, Any], name: str, key_args: dict[str, Any], asked: str = "") -> bool:
    called, arguments = call
    if called != name or not isinstance(arguments, dict):
        return False
    return all(k in arguments and _agrees_as_asked(v, arguments[k], asked) for k, v in key_args.items())


def _tool_call_item(item: ChecklistItem, view: TurnView) -> Decision:
    wanted = _evidence_calls(item, view)
    calls = view.executed_calls  # a call answered as invalid (unknown tool, schema error) did not happen
    if wanted:
        asked = f"{item.question} {item.pass_condition}"
        missing = [(n, a) for n, a in wanted if not any(_call_agrees(c, n, a, asked) for c in calls)]
        if not missing:
            return Decision(True, 0.9, "calls:evidence", "an executed call agrees with every evidence call")
        name, arguments = missing[0]
        rejected = any(_call_agrees(c, name, arguments, asked) for c in view.calls)
        why = "was rejected as invalid" if rejected else f"with {json.dumps(arguments)[:120]} was made"
        return Decision(False, 0.85, "calls:evidence", f"no executed {name} call: the call {why}")
    named = view.named_tools(item)
    if named:
        hit = any(name in named for name, _ in calls)
        return Decision(hit, 0.5, "calls:named", f"executed calls to {sorted(named)}: {hit}")
    return Decision(bool(calls), 0.2, "calls:any", "no usable evidence; any executed call counts")


def _avoid_calls(item: ChecklistItem, view: TurnView) -> Decision:
    targeted = view.named_tools(item)
    about_invented = bool(_INVENTED.search(item.question + " " + item.pass_condition))
    for name, arguments in view.calls:
        if targeted and name not in targeted:
            continue
        if any(ref == name and isinstance(args, dict) and _call_agrees((name, arguments), ref, args)
               for ref, args in view.reference_calls):
            continue
        if not targeted and not about_invented:
            continue  # no named target: only a call with invented values can be the avoided action
        if about_invented and _grounded_call(arguments, view):
            continue
        return Decision(False, 0.6 if targeted else 0.4, "avoid:calls", f"{name} call not licensed by the reference")
    return Decision(True, 0.6 if targeted else 0.4, "avoid:calls", "no avoided call")


def _grounded_call(arguments: Any, view: TurnView) -> bool:
    """Every checkable value of the call appears somewhere the user or a tool said it."""
    values = [v for _, v in leaf_pairs(arguments) if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
    context = " ".join(str(m.get("content") or "").lower()
                       for m in [*view.request.history, *view.request.current[:1], *view.messages]
                       if m.get("role") in ("user", "tool", "system"))
    for value in values:
        shown = str(value).strip().lower()
        if shown and shown not in context and not (facts(shown) and facts(shown) <= view.grounded_facts):
            return False
    return True


# -- tool results ------------------------------------------------------------------------------------------


def _tool_result_item(item: ChecklistItem, view: TurnView) -> Decision:
    expectations = []  # (reference position, tool name, pairs)
    for evidence in item.evidence:
        if evidence.from_ != "tool.content":
            continue
        message = view.reference_message(evidence.turn, evidence.step)
        name = getattr(message, "name", None) or ""
        fragment = parse_fragment(evidence.snippet)
        leaves = list(leaf_pairs(fragment)) if fragment else []
        pairs = [(k, v) for k, v in leaves if k not in ("exception", "error")]
        # Evidence that quotes an error (e.g. a failed login the user asked to try) expects an error response.
        expects_error = any(k in ("exception", "error") and v not in (None, "", False) for k, v in leaves)
        expectations.append(((evidence.turn, evidence.step), name, pairs, expects_error))
    if not expectations:
        named = view.named_tools(item)
        hit = any(ok and (not named or name in named) for name, _, ok in view.tool_results)
        return Decision(hit, 0.3, "results:named", "no tool-result evidence; an error-free result counts")
    used: dict[tuple[int, int], int] = {}
    taken: set[int] = set()
    for position, name, pairs, expects_error in expectations:
        if position in used:
            if not _result_matches(view.tool_results[used[position]], name, pairs, expects_error):
                return Decision(False, 0.8, "results:evidence", f"{name} result lacks {pairs[:3]}")
            continue
        match = next((i for i, result in enumerate(view.tool_results)
                      if i not in taken and _result_matches(result, name, pairs, expects_error)), None)
        if match is None:
            kind = "error" if expects_error else "error-free"
            return Decision(False, 0.85, "results:evidence", f"no {kind} {name} result with {pairs[:3]}")
        used[position] = match
        taken.add(match)
    return Decision(True, 0.9, "results:evidence", "every evidence result is matched")


def _result_matches(result: tuple[str, Any, bool], name: str, pairs: list[tuple[str, Any]],
                    expects_error: bool = False) -> bool:
    called, content, ok = result
    if ok == expects_error or (name and called and called != name):
        return False
    found = list(leaf_pairs(content)) if not isinstance(content, str) else []
    for key, value in pairs:
        if _ID_KEY.search(key):
            if not any(k == key for k, _ in found):
                return False
        elif not any(k == key and values_agree(value, v) for k, v in found):
            if not (isinstance(content, str) and str(value) in content):
                return False
    return True


# -- replies and thinking -----------------------------------------------------------------------------------
