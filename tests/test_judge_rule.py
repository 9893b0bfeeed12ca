"""The rule judge: deterministic, offline, approximate verdicts from item structure and evidence."""

from __future__ import annotations

import asyncio
import copy
import json

from cm2_env.data import load_dialogues, split_turns
from cm2_env.judge import JudgeRequest, RuleJudge, make_judge
from cm2_env.judge.rule import is_avoid_item

DIALOGUES = load_dialogues("tooltalk")


def _dicts(messages):
    return [m.model_dump(mode="json", exclude_none=True) for m in messages]


def reference_request(dialogue, turn, upto=None, items=None):
    """The reference transcript of ``turn`` (up to message ``upto`` of the turn) as a judge request."""
    t = split_turns(dialogue.messages)[turn]
    current = _dicts(t.messages[:upto])
    return JudgeRequest(dialogue, turn, len(t.actions), items or dialogue.checklist()[turn],
                        _dicts(dialogue.messages[: t.start]), current)


def test_the_reference_transcript_satisfies_its_tool_call_and_tool_result_items():
    judge = RuleJudge()
    checked = failed = 0
    for dialogue in DIALOGUES:
        for turn, items in enumerate(dialogue.checklist()):
            verdicts = judge.judge_sync(reference_request(dialogue, turn))
            for item in items:
                if item.focus_on in ("assistant.tool_calls", "tool.content") and not is_avoid_item(item):
                    checked += 1
                    failed += not verdicts[item.id].passed
    assert checked > 400 and failed <= checked * 0.01


def _first_turn_with_calls():
    for dialogue in DIALOGUES:
        for turn, items in enumerate(dialogue.checklist()):
            t = split_turns(dialogue.messages)[turn]
            call_items = [i for i in items if i.focus_on == "assistant.tool_calls" and not is_avoid_item(i)
                          and any(e.from_ == "assistant.tool_calls" for e in i.evidence)]
            if call_items and any(a.assistant.calls for a in t.actions):
                return dialogue, turn, call_items[0]
    raise AssertionError("no turn with calls")


def test_a_tool_call_item_fails_when_the_evidence_arguments_change():
    dialogue, turn, item = _first_turn_with_calls()
    request = reference_request(dialogue, turn, items=[item])
    assert RuleJudge().judge_sync(request)[item.id].passed is True
    current = copy.deepcopy(list(request.current))
    for message in current:
        for call in message.get("tool_calls") or []:
            arguments = json.loads(call["function"]["arguments"])
            call["function"]["arguments"] = json.dumps({k: f"{v}-changed" if isinstance(v, str) else v
                                                        for k, v in arguments.items()})
    changed = JudgeRequest(dialogue, turn, request.action, [item], request.history, current)
    verdict = RuleJudge().judge_sync(changed)[item.id]
    assert verdict.passed is False and verdict.source == "rule" and verdict.details["rule"] == "calls:evidence"


def test_a_tool_call_item_is_not_satisfied_before_the_call_is_made():
    dialogue, turn, item = _first_turn_with_calls()
    assert RuleJudge().judge_sync(reference_request(dialogue, turn, upto=1, items=[item]))[item.id].passed is False


def test_avoid_items_are_decided_only_once_the_turn_has_its_final_reply():
    dialogue = DIALOGUES[0]
    item = next(i for i in dialogue.checklist()[0] if is_avoid_item(i) and i.focus_on == "assistant.tool_calls")
    user = _dicts(split_turns(dialogue.messages)[0].messages[:1])
    forbidden_call = {"role": "assistant", "content": "", "tool_calls": [{"id": "x", "type": "function", "function": {
        "name": "CreateEvent", "arguments": json.dumps({"name": "Meeting", "event_type": "meeting",
                                                        "start_time": "2023-09-11 10:00:00",
                                                        "end_time": "2023-09-11 10:30:00"})}}]}
    response = {"role": "tool", "tool_call_id": "x", "name": "CreateEvent", "content": '{"response": {"event_id": "1"}, "exception": null}'}
    reply = {"role": "assistant", "content": "Done, your meeting is booked."}
    judge = RuleJudge()

    def verdict(current):
        return judge.judge_sync(JudgeRequest(dialogue, 0, 1, [item], [], current))[item.id].passed

    assert verdict([*user, forbidden_call, response]) is False  # pending: not decidable mid-turn
    assert verdict([*user, forbidden_call, response, reply]) is False
    assert verdict([*user, {"role": "assistant", "content": "When would you like to meet?"}]) is True


def test_a_reply_item_needs_the_key_values_of_its_evidence():
    for dialogue, turn, item in ((d, t, i) for d in DIALOGUES for t, items in enumerate(d.checklist())
                                 for i in items):
        if True:
            snippet = " ".join(e.snippet for e in item.evidence)
            if item.focus_on == "assistant.content.user_visible_reply" and not is_avoid_item(item) and any(
                    ch.isdigit() for ch in snippet):
                request = reference_request(dialogue, turn, items=[item])
                if not RuleJudge().judge_sync(request)[item.id].passed:
                    continue
                blanked = [*request.current[:-1], {"role": "assistant", "content": "Sure, here you go."}]
                wrong = JudgeRequest(dialogue, turn, request.action, [item], request.history, blanked)
                assert RuleJudge().judge_sync(wrong)[item.id].passed is False
                return
    raise AssertionError("no reply item with values found")


def test_the_rule_judge_is_deterministic_and_counts_no_llm_calls():
    request = reference_request(DIALOGUES[3], 0)
    first = asyncio.run(make_judge("rule").judge(request))
    second = asyncio.run(make_judge("rule").judge(request))
    assert first == second
    judge = RuleJudge()
    judge.judge_sync(request)
    assert judge.usage()["llm_calls"] == 0 and judge.usage()["items"] == len(request.items)


def test_the_rule_judge_says_it_is_an_approximation():
    import cm2_env.judge.rule as rule_module

    assert "APPROXIMATE" in rule_module.__doc__
    assert "approximate" in (RuleJudge.__doc__ or "").lower()


def test_garbage_in_the_transcript_gives_verdicts_not_exceptions():
    dialogue, turn, item = _first_turn_with_calls()
    current = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": 3, "arguments": "{{"}}]},
               {"role": "tool", "content": "not json"}, {"role": "assistant", "content": "<think>unclosed"}]
    verdicts = RuleJudge().judge_sync(JudgeRequest(dialogue, turn, 2, dialogue.checklist()[turn], [], current))
    assert set(verdicts) == {i.id for i in dialogue.checklist()[turn]}
    assert all(v.passed in (True, False) for v in verdicts.values())
