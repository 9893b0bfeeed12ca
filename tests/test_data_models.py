"""The data model: parsing the CM2 format, turn/step segmentation, renderings and round-tripping."""

import json

import pytest

from cm2_env.data import (
    DatasetError,
    Dialogue,
    dialogue_turns,
    load_dialogues,
    render,
    split_think,
    write_dialogues,
)


@pytest.fixture(scope="module")
def tooltalk():
    return load_dialogues("tooltalk")


def _minimal(**overrides):
    record = {
        "id": "d1",
        "tools": [{"type": "function", "function": {"name": "Echo", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}],
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "<think>plan</think>", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "Echo", "arguments": {"x": "é"}}}]},
            {"role": "tool", "tool_call_id": "c1", "name": "Echo", "content": "{\"x\": \"é\"}"},
            {"role": "assistant", "content": "<think> done </think>  Echoed é. "},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "ok"},
        ],
    }
    record.update(overrides)
    return record


def test_bundled_tooltalk_loads_all_78_dialogues_with_one_checklist_per_turn(tooltalk):
    assert len(tooltalk) == 78
    for dialogue in tooltalk:
        assert len(dialogue.checklists) == 1
        assert len(dialogue.checklist()) == len(dialogue_turns(dialogue))


def test_every_bundled_evidence_snippet_is_a_substring_of_its_rendering(tooltalk):
    checked = 0
    for dialogue in tooltalk:
        turns = dialogue_turns(dialogue)
        for items in dialogue.checklist():
            for item in items:
                for ev in item.evidence:
                    assert ev.snippet in render(turns[ev.turn].messages[ev.step], ev.from_)
                    checked += 1
    assert checked > 900


def test_uuid_is_accepted_as_id_and_dict_arguments_become_json_strings():
    record = _minimal()
    record["uuid"] = record.pop("id")
    dialogue = Dialogue.model_validate(record)
    assert dialogue.id == "d1"
    call = dialogue.messages[2].tool_calls[0]
    assert isinstance(call.function.arguments, str)
    assert call.function.parsed_arguments() == {"x": "é"}


def test_a_single_checklist_variant_without_the_outer_list_is_wrapped():
    item = {"id": "C0", "focus_on": "assistant.tool_calls", "question": "q?", "weight": 1.0,
            "evidence": [{"turn": 0, "step": 1, "from": "assistant.tool_calls", "snippet": "Echo"}]}
    single = Dialogue.model_validate(_minimal(checklists=[[item], [dict(item, focus_on="assistant.content.user_visible_reply")]]))
    nested = Dialogue.model_validate(_minimal(checklists=[[[item], [item]]]))
    assert len(single.checklists) == 1 and len(single.checklist()) == 2
    assert len(nested.checklists) == 1 and len(nested.checklist()) == 2
    assert single.checklist()[0][0].evidence[0].from_ == "assistant.tool_calls"


def test_turns_steps_and_actions_follow_the_format_definition():
    dialogue = Dialogue.model_validate(_minimal())
    turns = dialogue_turns(dialogue)
    assert [t.index for t in turns] == [0, 1]
    assert turns[0].start == 1  # the system message belongs to no turn
    assert [m.role for m in turns[0].messages] == ["user", "assistant", "tool", "assistant"]
    actions = turns[0].actions
    assert [(a.index, a.step, len(a.tool_responses)) for a in actions] == [(1, 1, 1), (2, 3, 0)]
    assert not actions[0].is_final_reply and actions[1].is_final_reply
    assert turns[0].ends_with_reply and turns[1].ends_with_reply


def test_the_four_renderings():
    dialogue = Dialogue.model_validate(_minimal())
    call_msg, tool_msg, reply_msg = dialogue.messages[2], dialogue.messages[3], dialogue.messages[4]
    assert render(call_msg, "assistant.tool_calls") == 'Echo({"x": "é"})'
    assert render(call_msg, "assistant.content.thinking") == "plan"
    assert render(reply_msg, "assistant.content.user_visible_reply") == "Echoed é."
    assert render(reply_msg, "assistant.content.thinking") == "done"
    assert render(tool_msg, "tool.content") == '{"x": "é"}'
    assert render(tool_msg, "assistant.tool_calls") == ""
    assert split_think("no tags") == ("", "no tags")
    assert split_think("<think>unclosed") == ("unclosed", "")


def test_writing_back_round_trips_and_keeps_unknown_keys(tmp_path, tooltalk):
    extra = Dialogue.model_validate(_minimal(meta={"k": 1}))
    out = tmp_path / "out.jsonl"
    assert write_dialogues(out, [*tooltalk[:3], extra]) == 4
    again = load_dialogues(out)
    assert [d.to_record() for d in again] == [d.to_record() for d in [*tooltalk[:3], extra]]
    assert json.loads(out.read_text().splitlines()[-1])["meta"] == {"k": 1}


def test_loading_a_broken_file_reports_every_bad_line_and_field(tmp_path):
    good = json.dumps(_minimal())
    missing = _minimal(id="d2")
    del missing["messages"]
    bad_role = _minimal(id="d3")
    bad_role["messages"][1]["role"] = "robot"
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join([good, "{not json", json.dumps(missing), json.dumps(bad_role)]) + "\n")
    with pytest.raises(DatasetError) as info:
        load_dialogues(path)
    where = {(p.line, p.record_id, p.field.split(".")[0]) for p in info.value.problems}
    assert (2, "", "") in where
    assert (3, "d2", "messages") in where
    assert any(p.line == 4 and p.field.startswith("messages.1.role") for p in info.value.problems)
    assert not any(p.line == 1 for p in info.value.problems)


def test_an_unknown_dataset_name_says_what_is_bundled():
    with pytest.raises(FileNotFoundError, match="bundled: tooltalk"):
        load_dialogues("no-such-dataset")
