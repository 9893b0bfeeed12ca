"""Tool-call parsing and rendering (cm2_env.toolcalls): every accepted format, structured errors, the CM2 rule that
calls inside reasoning do not count, and render -> parse round-trips."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cm2_env.data import Message, split_think
from cm2_env.data.models import ToolCall
from cm2_env.toolcalls import (
    ERROR_KINDS,
    ParsedAction,
    ParsedCall,
    canonical_json,
    parse,
    render_hermes,
    render_openai,
    to_assistant_message,
)


def _names_and_args(parsed: ParsedAction):
    return [(call.name, call.arguments) for call in parsed.calls]


def _kinds(parsed: ParsedAction):
    return [error.kind for error in parsed.errors]


# --- Hermes/Qwen text blocks ----------------------------------------------------------------------------


def test_a_single_hermes_block_becomes_one_call_and_the_text_around_it_the_content():
    parsed = parse('I will look it up.\n<tool_call>\n{"name": "Search", "arguments": {"q": "cats", "n": 3}}\n'
                   "</tool_call>")
    assert _names_and_args(parsed) == [("Search", {"q": "cats", "n": 3})]
    assert parsed.content == "I will look it up."
    assert parsed.thinking == ""
    assert parsed.errors == []
    assert not parsed.is_final_reply


def test_several_blocks_give_calls_in_order():
    text = ('<tool_call>{"name": "A", "arguments": {"x": 1}}</tool_call>\n'
            '<tool_call>{"name": "B", "arguments": {}}</tool_call><tool_call>{"name": "C"}</tool_call>')
    assert [call.name for call in parse(text).calls] == ["A", "B", "C"]


def test_a_block_holding_a_json_list_gives_one_call_per_element():
    parsed = parse('<tool_call>[{"name": "A", "arguments": {"x": 1}}, {"name": "B", "arguments": {"y": 2}}]'
                   "</tool_call>")
    assert _names_and_args(parsed) == [("A", {"x": 1}), ("B", {"y": 2})]


def test_parameters_is_accepted_in_place_of_arguments():
    parsed = parse('<tool_call>{"name": "A", "parameters": {"k": "v"}}</tool_call>')
    assert _names_and_args(parsed) == [("A", {"k": "v"})]


def test_arguments_given_as_a_json_string_are_decoded():
    body = json.dumps({"name": "A", "arguments": json.dumps({"k": ["v", 1]})})
    assert _names_and_args(parse(f"<tool_call>{body}</tool_call>")) == [("A", {"k": ["v", 1]})]


def test_missing_or_empty_arguments_mean_an_empty_object():
    parsed = parse('<tool_call>{"name": "A"}</tool_call><tool_call>{"name": "B", "arguments": ""}</tool_call>'
                   '<tool_call>{"name": "C", "arguments": null}</tool_call>')
    assert _names_and_args(parsed) == [("A", {}), ("B", {}), ("C", {})]
    assert parsed.errors == []


def test_whitespace_newlines_and_a_code_fence_inside_the_block_are_tolerated():
    text = '<tool_call>\n\n  ```json\n  {\n  "name" : "A",\n  "arguments" : {"x" : 1}\n  }\n  ```  \n</tool_call>'
    parsed = parse(text)
    assert _names_and_args(parsed) == [("A", {"x": 1})]
    assert parsed.errors == []


def test_an_openai_shaped_object_inside_a_block_is_understood():
    body = json.dumps({"type": "function", "function": {"name": "A", "arguments": '{"x": 1}'}})
    assert _names_and_args(parse(f"<tool_call>{body}</tool_call>")) == [("A", {"x": 1})]


def test_arguments_json_is_canonical_so_key_order_does_not_matter():
    first = parse('<tool_call>{"name": "A", "arguments": {"b": 1, "a": "é"}}</tool_call>').calls[0]
    second = parse('<tool_call>{"name": "A", "arguments": {"a": "é", "b": 1}}</tool_call>').calls[0]
    assert first.arguments_json == second.arguments_json == '{"a":"é","b":1}'
    assert canonical_json({"b": [2, 1], "a": None}) == '{"a":null,"b":[2,1]}'


def test_an_id_written_in_the_call_object_is_kept():
    assert parse('<tool_call>{"id": "c7", "name": "A", "arguments": {}}</tool_call>').calls[0].id == "c7"


def test_an_unclosed_final_block_with_valid_json_is_accepted_best_effort():
    parsed = parse('Checking.\n<tool_call>\n{"name": "A", "arguments": {"x": 1}}\n')
    assert _names_and_args(parsed) == [("A", {"x": 1})]
    assert parsed.errors == []
    assert parsed.content == "Checking."


def test_an_unclosed_final_block_with_truncated_json_is_an_unclosed_block_error():
    parsed = parse('<tool_call>\n{"name": "A", "arguments": {"x": ')
    assert parsed.calls == []
    assert _kinds(parsed) == ["unclosed_block"]
    assert not parsed.is_final_reply


def test_a_block_left_open_before_the_next_block_does_not_swallow_it():
    parsed = parse('<tool_call>{"name": "A", "argu<tool_call>{"name": "B", "arguments": {}}</tool_call>')
    assert [call.name for call in parsed.calls] == ["B"]
    assert _kinds(parsed) == ["unclosed_block"]


# --- OpenAI tool_calls ----------------------------------------------------------------------------------


def test_openai_tool_calls_with_string_or_object_arguments_are_parsed_with_their_ids():
    tool_calls = [
        {"id": "call_a", "type": "function", "function": {"name": "A", "arguments": '{"x": 1}'}},
        {"id": "call_b", "type": "function", "function": {"name": "B", "arguments": {"y": [1]}}},
    ]
    parsed = parse(None, tool_calls=tool_calls)
    assert _names_and_args(parsed) == [("A", {"x": 1}), ("B", {"y": [1]})]
    assert [call.id for call in parsed.calls] == ["call_a", "call_b"]
    assert parsed.content == "" and parsed.errors == []


def test_pydantic_tool_calls_from_the_data_model_are_accepted():
    message = Message(role="assistant", content="<think>go</think>", tool_calls=[
        ToolCall(id="c1", function={"name": "Echo", "arguments": {"x": "é"}})])
    parsed = parse(message.content, tool_calls=message.tool_calls)
    assert _names_and_args(parsed) == [("Echo", {"x": "é"})]
    assert parsed.thinking == "go"


def test_openai_calls_come_before_calls_found_in_the_text():
    parsed = parse('<tool_call>{"name": "T"}</tool_call>', tool_calls=[{"function": {"name": "O", "arguments": "{}"}}])
    assert [call.name for call in parsed.calls] == ["O", "T"]


def test_malformed_openai_tool_calls_give_errors_not_exceptions():
    parsed = parse("", tool_calls=[{"function": {"name": "A", "arguments": "{oops"}}, {"function": {}}, "x"])
    assert _kinds(parsed) == ["bad_arguments", "missing_name", "not_an_object"]
    assert _kinds(parse("", tool_calls="not a list")) == ["not_an_object"]


# --- reasoning ------------------------------------------------------------------------------------------


def test_calls_written_only_inside_think_are_not_calls():
    parsed = parse('<think>I should call <tool_call>{"name": "A", "arguments": {}}</tool_call></think>The answer is 4.')
    assert parsed.calls == [] and parsed.errors == []
    assert parsed.is_final_reply
    assert parsed.content == "The answer is 4."
    assert "<tool_call>" in parsed.thinking


def test_calls_after_an_unclosed_think_are_reasoning_too():
    parsed = parse('<think>planning <tool_call>{"name": "A"}</tool_call>')
    assert parsed.calls == [] and parsed.is_final_reply


def test_thinking_uses_the_shared_think_split():
    text = "<think> a </think>x<think>b</think> y <tool_call>{\"name\": \"A\"}</tool_call>"
    thinking, _ = split_think(text)
    assert parse(text).thinking == thinking == "a\nb"


def test_a_plain_reply_is_a_final_reply():
    parsed = parse("  Your meeting is booked.  ")
    assert parsed.is_final_reply and parsed.content == "Your meeting is booked." and parsed.calls == []


# --- malformed input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('<tool_call>{"name": "A", "arguments": {"x": 1}</tool_call>', "invalid_json"),
        ("<tool_call>{'name': 'A'}</tool_call>", "invalid_json"),
        ('<tool_call>{"name": "A", "arguments": {"x": NaN}}</tool_call>', "invalid_json"),
        ('<tool_call>{"arguments": {}}</tool_call>', "missing_name"),
        ('<tool_call>{"name": "", "arguments": {}}</tool_call>', "missing_name"),
        ('<tool_call>{"name": 3, "arguments": {}}</tool_call>', "missing_name"),
        ('<tool_call>{"name": "A", "arguments": [1, 2]}</tool_call>', "bad_arguments"),
        ('<tool_call>{"name": "A", "arguments": "not json"}</tool_call>', "bad_arguments"),
        ('<tool_call>{"name": "A", "arguments": "[1]"}</tool_call>', "bad_arguments"),
        ('<tool_call>{"name": "A", "arguments": 5}</tool_call>', "bad_arguments"),
        ('<tool_call>"A"</tool_call>', "not_an_object"),
        ("<tool_call>[1]</tool_call>", "not_an_object"),
        ("<tool_call>  </tool_call>", "empty_block"),
        ("<tool_call>[]</tool_call>", "empty_block"),
        ('{"name": "A"}</tool_call>', "unopened_block"),
        ('<tool_call>{"name": "A"', "unclosed_block"),
        ("<tool_call>" + "[" * 50_000 + "</tool_call>", "invalid_json"),
    ],
)
def test_malformed_blocks_return_one_structured_error(text, kind):
    parsed = parse(text)
    assert _kinds(parsed) == [kind]
    assert kind in ERROR_KINDS
    assert parsed.calls == [] and not parsed.is_final_reply
    snippet = parsed.errors[0].snippet
    assert parsed.errors[0].message and len(snippet) <= 200  # 160 characters and the cut marker
    assert len(text) < 160 or snippet.endswith("characters cut ...]")


def test_a_bad_element_of_a_list_does_not_drop_the_good_ones():
    parsed = parse('<tool_call>[{"name": "A"}, {"arguments": {}}, {"name": "B"}]</tool_call>')
    assert [call.name for call in parsed.calls] == ["A", "B"]
    assert _kinds(parsed) == ["missing_name"]


@pytest.mark.parametrize("value", [5, b"<tool_call>", ["x"], {"content": "x"}, 3.5, object()])
def test_a_non_string_action_is_a_not_text_error(value):
    parsed = parse(value)
    assert _kinds(parsed) == ["not_text"] and parsed.calls == []


def test_the_error_message_says_how_to_fix_the_call():
    message = parse('<tool_call>{"name": "A", "arguments": {"x": 1}</tool_call>').errors[0].message
    assert "not valid JSON" in message and '"arguments"' in message


# --- renderers ------------------------------------------------------------------------------------------


def test_render_hermes_writes_the_qwen_text_form():
    calls = [ParsedCall("A", {"x": 1}, '{"x":1}'), {"name": "B", "arguments": {"y": "é"}}]
    text = render_hermes(calls, content="Let me check.", thinking="plan")
    assert text == ('<think>\nplan\n</think>\n\nLet me check.\n<tool_call>\n{"name": "A", "arguments": {"x": 1}}\n'
                    '</tool_call>\n<tool_call>\n{"name": "B", "arguments": {"y": "é"}}\n</tool_call>')


def test_render_hermes_escapes_tags_inside_arguments_so_they_parse_back():
    call = {"name": "Write", "arguments": {"text": "a </tool_call> b <think>"}}
    parsed = parse(render_hermes([call]))
    assert _names_and_args(parsed) == [("Write", {"text": "a </tool_call> b <think>"})]


def test_render_openai_writes_ids_types_and_json_string_arguments():
    rendered = render_openai([ParsedCall("A", {"x": 1}, '{"x":1}', id="c9"), {"name": "B"}])
    assert rendered == [
        {"id": "c9", "type": "function", "function": {"name": "A", "arguments": '{"x": 1}'}},
        {"id": "call_1", "type": "function", "function": {"name": "B", "arguments": "{}"}},
    ]


def test_renderers_refuse_invalid_calls():
    with pytest.raises(ValueError):
        render_openai([{"arguments": {}}])
    with pytest.raises(ValueError):
        render_hermes([{"name": "A", "arguments": "[1]"}])


def test_to_assistant_message_keeps_thinking_as_a_prefix_and_numbers_calls():
    parsed = parse('<think>plan</think>Sure.<tool_call>{"name": "A", "arguments": {"x": 1}}</tool_call>'
                   '<tool_call>{"name": "B"}</tool_call>')
    message = to_assistant_message(parsed)
    assert message["role"] == "assistant"
    assert split_think(message["content"]) == ("plan", "Sure.")
    assert [call["id"] for call in message["tool_calls"]] == ["call_0", "call_1"]
    assert Message.model_validate(message).calls[1].name == "B"
    reparsed = parse(message["content"], tool_calls=message["tool_calls"])
    assert _names_and_args(reparsed) == _names_and_args(parsed)


def test_to_assistant_message_of_a_final_reply_has_no_tool_calls():
    message = to_assistant_message(parse("Done."))
    assert message == {"role": "assistant", "content": "Done."}


# --- properties -----------------------------------------------------------------------------------------

_FRAGMENTS = ["<tool_call>", "</tool_call>", "<think>", "</think>", "<tool_call", "</", "{", "}", "[", "]", '"name"',
              '"arguments"', '"parameters"', ":", ",", '"', "\\", "```", "```json", "\n", " ", "null", "NaN", "1e999",
              '{"name": "A", "arguments": {}}', '"{\\"x\\": 1}"', '"function"', "-", "0"]
_fragment_text = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=8)), max_size=30).map("".join)
_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
_json_values = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_arguments = st.dictionaries(st.text(max_size=10), _json_values, max_size=5)
_names = st.text(min_size=1, max_size=20).filter(lambda s: s.strip())
_TAGS = ("<think>", "</think>", "<tool_call>", "</tool_call>")
_free_text = st.text(max_size=60).filter(lambda s: not any(tag in s for tag in _TAGS))
_PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Generating nested JSON arguments is what costs time here, not parsing; fewer examples keep the file fast.
_ROUND_TRIP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(st.text())
def test_parse_never_raises_on_arbitrary_text(text):
    # parse() turns any exception into an "internal" error, so asserting that none occurred is what can fail
    parsed = parse(text)
    assert isinstance(parsed, ParsedAction) and not any(e.kind == "internal" for e in parsed.errors)


@settings(max_examples=1000, deadline=None)
@given(_fragment_text)
def test_parse_never_raises_on_text_made_of_tag_and_json_fragments(text):
    parsed = parse(text)
    assert all(error.kind in ERROR_KINDS and error.kind != "internal" for error in parsed.errors)
    assert parsed.is_final_reply == (not parsed.calls and not parsed.errors)


@_ROUND_TRIP
@given(st.one_of(_json_values, st.lists(st.dictionaries(st.sampled_from(["id", "function", "name", "arguments"]),
                                                          _json_values | st.dictionaries(st.sampled_from(
                                                              ["name", "arguments"]), _json_values)))))
def test_parse_never_raises_on_arbitrary_tool_calls(tool_calls):
    parsed = parse("", tool_calls=tool_calls)
    assert isinstance(parsed, ParsedAction) and not any(e.kind == "internal" for e in parsed.errors)


@_ROUND_TRIP
@given(st.lists(st.tuples(_names, _arguments), max_size=4), _free_text, _free_text)
def test_render_hermes_then_parse_round_trips(calls, content, thinking):
    parsed = parse(render_hermes([{"name": n, "arguments": a} for n, a in calls], content=content, thinking=thinking))
    assert parsed.errors == []
    assert _names_and_args(parsed) == calls
    assert parsed.content == content.strip()
    assert parsed.thinking == thinking.strip()


@_ROUND_TRIP
@given(st.lists(st.tuples(_names, _arguments), max_size=4))
def test_render_openai_then_parse_round_trips(calls):
    rendered = render_openai([{"name": n, "arguments": a} for n, a in calls])
    parsed = parse(None, tool_calls=rendered)
    assert parsed.errors == []
    assert _names_and_args(parsed) == calls
    assert [call.id for call in parsed.calls] == [f"call_{i}" for i in range(len(calls))]
    assert [call.arguments_json for call in parsed.calls] == [canonical_json(a) for _, a in calls]
