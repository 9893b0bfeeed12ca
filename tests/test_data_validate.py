"""Validation reports every problem of a file, each with its line and field path, and never a valid record."""

import copy
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from cm2_env.data import load_dialogues
from cm2_env.data.validate import dependency_cycles, validate_file, validate_record


def valid_record(rid: str) -> dict:
    """A small, fully valid one-turn dialogue: a call, its result and a reply, with a three-item checklist."""
    return {
        "id": rid,
        "tools": [{"type": "function", "function": {
            "name": "GetWeather", "description": "Current weather of a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "GetWeather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "name": "GetWeather", "content": "{\"temp\": 21}"},
            {"role": "assistant", "content": "It is 21 degrees in Paris."},
        ],
        "checklists": [[[
            {"id": "C0", "focus_on": "assistant.tool_calls", "question": "Did it query the weather of Paris?",
             "evidence": [{"turn": 0, "step": 1, "from": "assistant.tool_calls", "snippet": "GetWeather({\"city\": \"Paris\"})"}],
             "required_for_next_turn": True, "dependence": [], "weight": 0.4},
            {"id": "C1", "focus_on": "tool.content", "question": "Did the tool return a temperature?",
             "evidence": [{"turn": 0, "step": 2, "from": "tool.content", "snippet": "\"temp\": 21"}],
             "required_for_next_turn": False, "dependence": [], "weight": 0.2},
            {"id": "C2", "focus_on": "assistant.content.user_visible_reply", "question": "Did the reply say 21 degrees?",
             "evidence": [{"turn": 0, "step": 3, "from": "assistant.content.user_visible_reply", "snippet": "21 degrees"}],
             "required_for_next_turn": True, "dependence": ["C1"], "weight": 0.4},
        ]]],
    }


def _items(record: dict) -> list[dict]:
    return record["checklists"][0][0]


def broken_lines() -> tuple[list[str], dict[int, set[str]]]:
    """JSONL lines with deliberately broken records, and the field paths expected per 1-based line."""
    lines, expected = [], {}

    def add(record, fields=None):
        lines.append(record if isinstance(record, str) else json.dumps(record))
        if fields is not None:
            expected[len(lines)] = set(fields)

    add(valid_record("ok-1"))
    add('{"id": "cut", "messages": [')  # bad JSON line
    expected[2] = {""}

    missing = valid_record("missing-keys")  # no messages, an item without question
    del missing["messages"]
    del _items(missing)[0]["question"]
    add(missing, {"messages", "checklists.0.0.0.question"})

    weights_and_snippet = valid_record("weights-and-snippet")
    _items(weights_and_snippet)[0]["weight"] = 0.5  # turn sums to 1.1
    _items(weights_and_snippet)[2]["evidence"][0]["snippet"] = "22 degrees"
    add(weights_and_snippet, {"checklists.0.0", "checklists.0.0.2.evidence.0.snippet"})

    structural_and_snippet = valid_record("structural-and-snippet")  # still checked past the structural error
    _items(structural_and_snippet)[1]["weight"] = "heavy"
    _items(structural_and_snippet)[2]["evidence"][0]["snippet"] = "It is 21 degrees in Rome"
    add(structural_and_snippet, {"checklists.0.0.1.weight", "checklists.0.0.2.evidence.0.snippet"})

    add("")  # blank lines are skipped
    add(valid_record("ok-2"))

    cycle = valid_record("cycle")
    _items(cycle)[0].update(focus_on="tool.content", dependence=["C1"])
    _items(cycle)[1]["dependence"] = ["C0"]
    add(cycle, {"checklists.0.0.0.dependence"})

    dependence = valid_record("dependence")
    _items(dependence)[2]["dependence"] = ["C0", "C9"]  # C0 focuses on tool calls; C9 does not exist
    add(dependence, {"checklists.0.0.2.dependence.0", "checklists.0.0.2.dependence.1"})

    unknown_tool = valid_record("unknown-tool")
    call = unknown_tool["messages"][2]["tool_calls"][0]["function"]
    call["name"] = "GetWether"
    add(unknown_tool, {"messages.2.tool_calls.0.function.name", "checklists.0.0.0.evidence.0.snippet"})

    bad_arguments = valid_record("bad-arguments")
    bad_arguments["messages"][2]["tool_calls"][0]["function"]["arguments"] = "[\"Paris\"]"
    _items(bad_arguments)[0]["evidence"][0]["snippet"] = "GetWeather("
    add(bad_arguments, {"messages.2.tool_calls.0.function.arguments"})

    no_reply = valid_record("no-reply")
    no_reply["messages"].pop()  # the turn ends with the tool response; C2's evidence step no longer exists
    add(no_reply, {"messages.3", "checklists.0.0.2.evidence.0.step"})

    strictness = valid_record("strictness")
    strictness["uuid"] = strictness.pop("id")
    _items(strictness)[0].update(required_for_next_turn="yes", focus_on="assistant.reply")
    _items(strictness)[1]["required_for_next_turn"] = 1
    add(strictness, {"checklists.0.0.0.required_for_next_turn", "checklists.0.0.0.focus_on",
                     "checklists.0.0.1.required_for_next_turn"})

    pointers = valid_record("pointers")
    _items(pointers)[0]["evidence"][0]["turn"] = 3
    _items(pointers)[1]["evidence"][0]["step"] = 1  # an assistant message, but `from` is tool.content
    _items(pointers)[2]["evidence"][0]["step"] = 7
    add(pointers, {"checklists.0.0.0.evidence.0.turn", "checklists.0.0.1.evidence.0.from",
                   "checklists.0.0.2.evidence.0.step"})

    schemas = valid_record("schemas")
    schemas["tools"][0]["function"]["parameters"]["properties"]["city"]["type"] = "text"
    schemas["tools"].append(copy.deepcopy(schemas["tools"][0]))
    schemas["tools"][1]["function"]["parameters"] = {"type": "array", "items": {"type": "string"}}
    add(schemas, {"tools.0.function.parameters.properties.city.type", "tools.1.function.name",
                  "tools.1.function.parameters.type"})

    add([1, 2], {""})  # not an object
    add(valid_record("ok-1"), {"id"})  # duplicate dialogue id
    add(valid_record("ok-3"))
    return lines, expected


def _fields_by_line(problems) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for problem in problems:
        found.setdefault(problem.line, set()).add(problem.field)
    return found


def test_bundled_tooltalk_has_78_dialogues_and_no_problems():
    dialogues, problems = validate_file("tooltalk")
    assert len(dialogues) == 78
    assert problems == []


def test_every_problem_of_a_broken_file_is_reported_with_line_and_field_path(tmp_path):
    lines, expected = broken_lines()
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    dialogues, problems = validate_file(path)
    assert _fields_by_line(problems) == expected
    assert all(problem.path == str(path) for problem in problems)


def test_valid_lines_are_never_reported(tmp_path):
    lines, expected = broken_lines()
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    _, problems = validate_file(path)
    valid_lines = {n for n, line in enumerate(lines, 1) if line and n not in expected}
    assert valid_lines == {1, 7, len(lines)}
    assert not valid_lines & {problem.line for problem in problems}


def test_records_with_only_semantic_problems_still_load_as_dialogues(tmp_path):
    lines, _ = broken_lines()
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    dialogues, _ = validate_file(path)
    ids = [d.id for d in dialogues]
    assert {"ok-1", "ok-2", "ok-3", "cycle", "weights-and-snippet", "no-reply"} <= set(ids)
    assert "missing-keys" not in ids and "structural-and-snippet" not in ids


def test_problem_messages_name_the_record_and_say_the_fix(tmp_path):
    lines, _ = broken_lines()
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    _, problems = validate_file(path)
    by_field = {(p.record_id, p.field): p.message for p in problems}
    assert "sum to 1.1" in by_field[("weights-and-snippet", "checklists.0.0")]
    assert "rescale" in by_field[("weights-and-snippet", "checklists.0.0")]
    assert "C0 -> C1 -> C0" in by_field[("cycle", "checklists.0.0.0.dependence")]
    assert "'tool.content'" in by_field[("dependence", "checklists.0.0.2.dependence.0")]
    assert "'GetWether'" in by_field[("unknown-tool", "messages.2.tool_calls.0.function.name")]
    assert "ends with a tool message" in by_field[("no-reply", "messages.3")]
    assert "true or false" in by_field[("strictness", "checklists.0.0.0.required_for_next_turn")]
    assert "verbatim" in by_field[("weights-and-snippet", "checklists.0.0.2.evidence.0.snippet")]
    assert "JSON object" in by_field[("bad-arguments", "messages.2.tool_calls.0.function.arguments")]
    line = str(next(p for p in problems if p.record_id == "cycle"))
    assert line.startswith(f"{path}:8: cycle: checklists.0.0.0.dependence: ")


def test_weights_that_sum_to_one_within_float_error_are_accepted():
    record = valid_record("tenths")
    template = _items(record)[1]
    record["checklists"][0][0] = [dict(template, id=f"C{i}", weight=0.1) for i in range(10)]
    assert sum([0.1] * 10) != 1.0
    assert validate_record(record) == []


def test_a_turn_without_checklist_items_and_a_missing_turn_entry_are_reported():
    record = valid_record("empty")
    record["checklists"][0][0] = []
    assert [p.field for p in validate_record(record)] == ["checklists.0.0"]
    record["checklists"][0] = []
    assert [p.field for p in validate_record(record)] == ["checklists.0"]


def test_parsed_bundled_dialogues_pass_semantic_validation():
    for dialogue in load_dialogues("tooltalk")[:10]:
        assert validate_record(dialogue.to_record()) == []


def test_dependency_cycles_finds_one_cycle_per_strongly_connected_component():
    graph = {"C0": ["C1"], "C1": ["C2"], "C2": ["C0"], "C3": ["C3"], "C4": ["C0"], "C5": []}
    assert dependency_cycles(graph) == [["C0", "C1", "C2", "C0"], ["C3", "C3"]]
    assert dependency_cycles({"C0": ["C1"], "C1": []}) == []


_KEYS = ["id", "tools", "messages", "checklists", "role", "content", "tool_calls", "function", "name",
         "arguments", "parameters", "type", "properties", "evidence", "turn", "step", "from", "snippet",
         "dependence", "weight", "focus_on"]
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 5) | st.floats(allow_nan=False) | st.sampled_from(
        ["user", "assistant", "tool", "system", "object", "tool.content", "C0", "{}", "[1]", "<think>"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _json, max_size=6))
def test_validation_never_raises_on_garbage_records(record):
    for problem in validate_record(record):
        assert isinstance(problem.field, str) and problem.message


def test_snippets_are_matched_against_the_rendering_the_model_produces():
    record = valid_record("null-arguments")
    record["tools"][0]["function"]["parameters"]["required"] = []
    record["messages"][2]["tool_calls"][0]["function"]["arguments"] = None  # read as {} by the model
    record["checklists"][0][0][0]["evidence"][0]["snippet"] = "GetWeather({})"
    path_problems = validate_record(load_dialogues([record])[0].to_record())
    assert path_problems == []
