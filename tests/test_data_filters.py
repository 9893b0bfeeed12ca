"""Rule-based filters: each criterion rejects its minimal failing example with a reason; counts overlap."""

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cm2_env.data.filters import CRITERIA, apply_filters, rejection_reasons, think_tags, uses_reasoning
from cm2_env.data.io import bundled_path, read_records


def good() -> dict:
    """A clean two-turn record: a call with its response, a reply, then a second question and reply."""
    return {
        "id": "good",
        "tools": [{"type": "function", "function": {
            "name": "GetWeather", "description": "Current weather of a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                           "required": ["city"]}}}],
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "GetWeather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "name": "GetWeather", "content": "{\"temp\": 21}"},
            {"role": "assistant", "content": "It is 21 degrees in Paris."},
            {"role": "user", "content": "Thanks!"},
            {"role": "assistant", "content": "You're welcome."},
        ],
    }


def edit(change) -> dict:
    record = good()
    change(record)
    return record


def _call(record):
    return record["messages"][2]["tool_calls"][0]["function"]


def _set(path, value):
    """A change that sets record[path...] = value."""
    def change(record):
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _two_calls_one_response(record):
    calls = record["messages"][2]["tool_calls"]
    calls.append(copy.deepcopy(calls[0]) | {"id": "c2"})


def _reasoning_with_nested_think(record):
    for message in record["messages"]:
        if message["role"] == "assistant":
            message["content"] = "<think>ok</think>" + message["content"]
    record["messages"][4]["content"] = "<think>plan<think>check 21</think>It is 21 degrees in Paris."


# (example name, change, the criteria the example fails: exactly these)
MINIMAL_FAILURES = [
    ("unknown tool", lambda r: _call(r).update(name="GetWether"), {"tool_schema"}),
    ("missing required argument", lambda r: _call(r).update(arguments="{\"unit\": \"C\"}"), {"tool_schema"}),
    ("unknown argument", lambda r: _call(r).update(arguments={"city": "Paris", "country": "FR"}), {"tool_schema"}),
    ("arguments not JSON", lambda r: _call(r).update(arguments="{city: Paris}"), {"tool_schema"}),
    ("arguments not an object", lambda r: _call(r).update(arguments="[\"Paris\"]"), {"tool_schema"}),
    ("tool of another type", _set(["tools", 0, "type"], "retrieval"), {"tool_schema"}),
    ("invalid tool name", lambda r: (r["tools"][0]["function"].update(name="get weather"),
                                     _call(r).update(name="get weather")), {"tool_schema"}),
    ("assistant reply twice in a row", lambda r: r["messages"].insert(5, {"role": "assistant", "content": "Also sunny."}),
     {"role_order"}),
    ("system message not first", lambda r: r["messages"].insert(5, {"role": "system", "content": "Be brief."}),
     {"role_order"}),
    ("dialogue starts with the assistant", lambda r: r["messages"].insert(1, {"role": "assistant", "content": "Hi!"}),
     {"role_order"}),
    ("ends with a user message", lambda r: r["messages"].pop(), {"role_order"}),
    ("assistant without calls followed by a tool",
     lambda r: (r["messages"][2].pop("tool_calls"), r["messages"][2].update(content="Let me check.")),
     {"role_order", "one_response_per_call"}),
    ("two calls, one response", _two_calls_one_response, {"one_response_per_call"}),
    ("response to another call id", _set(["messages", 3, "tool_call_id"], "c7"), {"one_response_per_call"}),
    ("invented tool output", _set(["messages", 4, "content"], "<tool_response>{\"temp\": 30}</tool_response> 30 degrees."),
     {"no_tool_response_tags"}),
    ("tool content not JSON", _set(["messages", 3, "content"], "sunny, 21 degrees"), {"tool_content_json"}),
    ("tool content empty JSON", _set(["messages", 3, "content"], "{}"), {"tool_content_json"}),
    ("duplicate tool names", lambda r: r["tools"].append(copy.deepcopy(r["tools"][0])), {"unique_tool_names"}),
    ("blank user message", _set(["messages", 5, "content"], "   "), {"non_empty_content"}),
    ("reply without visible text", _set(["messages", 6, "content"], ""), {"non_empty_content"}),
    ("blank tool content", _set(["messages", 3, "content"], " "), {"non_empty_content", "tool_content_json"}),
    ("nested think tags in reasoning data", _reasoning_with_nested_think, {"think_tags"}),
    ("reasoning data with a message without think",
     _set(["messages", 4, "content"], "<think>21 degrees</think>It is 21 degrees in Paris."), {"think_tags"}),
    ("think block after the reply", lambda r: [m.update(content=m["content"] + "<think>x</think>")
                                               for m in r["messages"] if m["role"] == "assistant"], {"think_tags"}),
]


def test_the_clean_record_and_the_bundled_data_pass_every_criterion():
    assert rejection_reasons(good()) == {}
    records = [raw.data for raw in read_records(bundled_path("tooltalk"))]
    kept, report = apply_filters(records)
    assert len(kept) == report["kept"] == report["total"] == 78
    assert set(report["criteria"]) == set(CRITERIA)
    assert sum(report["criteria"].values()) == 0


@pytest.mark.parametrize("name,change,failing", MINIMAL_FAILURES, ids=[case[0] for case in MINIMAL_FAILURES])
def test_each_minimal_failing_example_is_rejected_by_exactly_its_criteria_with_a_reason(name, change, failing):
    reasons = rejection_reasons(edit(change))
    assert set(reasons) == failing
    assert all(isinstance(reason, str) and reason for reason in reasons.values())


def test_every_criterion_has_a_minimal_failing_example():
    covered = set().union(*(failing for _, _, failing in MINIMAL_FAILURES))
    assert covered == set(CRITERIA)


def test_reasons_point_at_the_offending_message():
    assert "GetWether" in rejection_reasons(edit(lambda r: _call(r).update(name="GetWether")))["tool_schema"]
    reason = rejection_reasons(edit(_set(["messages", 3, "content"], "sunny")))["tool_content_json"]
    assert reason.startswith("messages[3]")


def test_the_think_rule_applies_only_to_reasoning_data_unless_required():
    plain = good()
    assert not uses_reasoning(plain)
    assert think_tags(plain) is None
    assert "no <think> block" in think_tags(plain, require_think=True)
    reasoning = edit(lambda r: [m.update(content="<think>plan</think>" + m["content"])
                                for m in r["messages"] if m["role"] == "assistant"])
    assert uses_reasoning(reasoning)
    assert think_tags(reasoning) is None and think_tags(reasoning, require_think=True) is None
    _, report = apply_filters([plain, reasoning], require_think=True)
    assert report["criteria"]["think_tags"] == 1 and report["kept"] == 1
    _, report = apply_filters([plain, reasoning])
    assert report["criteria"]["think_tags"] == 0 and report["kept"] == 2


def test_the_report_counts_every_criterion_a_record_fails_and_the_kept_total():
    unknown_tool = edit(lambda r: _call(r).update(name="GetWether"))
    two_problems = edit(lambda r: (r["tools"].append(copy.deepcopy(r["tools"][0])), r["messages"][5].update(content="")))
    bad_think = edit(_reasoning_with_nested_think)
    records = [good(), unknown_tool, two_problems, good(), bad_think]
    kept, report = apply_filters(records)
    assert kept == [records[0], records[3]]
    assert report["total"] == 5 and report["kept"] == 2 and report["rejected"] == 3
    assert report["criteria"] == {
        "tool_schema": 1, "role_order": 0, "one_response_per_call": 0, "no_tool_response_tags": 0,
        "tool_content_json": 0, "unique_tool_names": 1, "non_empty_content": 1, "think_tags": 1,
    }
    assert [example["index"] for example in report["examples"]["unique_tool_names"]] == [2]
    json.dumps(report)  # the report is JSON-serialisable


def test_a_subset_of_criteria_keeps_what_the_others_would_reject():
    records = [good(), edit(lambda r: _call(r).update(name="GetWether")), edit(_set(["messages", 5, "content"], ""))]
    kept, report = apply_filters(records, criteria=["non_empty_content"])
    assert len(kept) == 2 and report["criteria"] == {"non_empty_content": 1}
    with pytest.raises(ValueError, match="unknown filter criteria nope"):
        apply_filters(records, criteria=["nope"])


def test_malformed_records_are_rejected_with_a_reason_instead_of_raising():
    for record in [None, [], {"messages": "hi"}, {"messages": [None, 3]}, {"tools": {}, "messages": []}]:
        reasons = rejection_reasons(record)
        assert reasons and all(isinstance(r, str) for r in reasons.values())


_KEYS = ["id", "tools", "messages", "role", "content", "tool_calls", "function", "name", "arguments",
         "parameters", "type", "properties", "required", "additionalProperties", "tool_call_id"]
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 5) | st.sampled_from(
        ["user", "assistant", "tool", "system", "function", "GetWeather", "{}", "[1]", "<think>", "</think>"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_criteria_never_raise_on_garbage(record):
    for reason in rejection_reasons(record, require_think=True).values():
        assert isinstance(reason, str)
