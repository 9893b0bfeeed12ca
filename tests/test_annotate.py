"""The LLM steps of the data pipeline (checklist annotation, the NoError LLM filter, CoT compression) against the
scripted OpenAI-compatible server: what is written, what is rejected with which reasons, what is sent."""

import asyncio
import copy
import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cm2_env.annotate.checklists import annotate_dialogue, tidy_variant
from cm2_env.annotate.compress import check_rewrite, compress_dialogue, presented_message
from cm2_env.annotate.llm_filter import parse_review
from cm2_env.cli import main
from cm2_env.data import Dialogue, load_dialogues
from cm2_env.llm import make_client
from tests.support.scripted_server import Fault, ScriptedServer
from tests.test_data_validate import valid_record


def cm2(*args):
    return CliRunner().invoke(main, ["data", *args], catch_exceptions=False)


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def gold():
    """Three bundled ToolTalk dialogues, keyed by their first user message (how a responder recognises them)."""
    dialogues = load_dialogues("tooltalk")[:3]
    keyed = {next(m.text for m in d.messages if m.role == "user"): d for d in dialogues}
    assert len(keyed) == 3
    return keyed


def gold_answer(dialogue: Dialogue) -> dict:
    """The answer a perfect annotator gives: the dialogue's bundled checklist in the requested shape."""
    variant = dialogue.to_record()["checklists"][0]
    return {"turns": [{"turn": t, "items": items} for t, items in enumerate(variant)]}


def dialogue_of(request: dict, gold: dict) -> Dialogue:
    prompt = request["messages"][1]["content"]
    return next(d for user, d in gold.items() if user in prompt)


def write_without_checklists(path, dialogues):
    records = [{k: v for k, v in d.to_record().items() if k != "checklists"} for d in dialogues]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


# --- annotation ------------------------------------------------------------------------------------------


def test_annotate_writes_checklists_that_pass_cm2_data_validate_and_a_report(tmp_path, gold):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_without_checklists(source, gold.values())
    with ScriptedServer(lambda request: json.dumps(gold_answer(dialogue_of(request, gold)))) as srv:
        result = cm2("annotate", str(source), str(out), "--llm", srv.spec, "--concurrency", "3")
        requests = list(srv.requests)
    assert result.exit_code == 0, result.output
    written = {r["id"]: r for r in lines(out)}
    assert set(written) == {d.id for d in gold.values()}
    for dialogue in gold.values():
        assert written[dialogue.id]["checklists"] == dialogue.to_record()["checklists"]
    validation = cm2("validate", str(out))
    assert validation.exit_code == 0, validation.output
    assert validation.output.strip().endswith("3 dialogues, 0 problems")
    report = json.loads((tmp_path / "out.jsonl.report.json").read_text())
    assert (report["written"], report["rejected"], report["failed"]) == (3, 0, 0)
    assert report["counts"]["requests"] == 3 and report["counts"]["repaired"] == 0
    assert report["usage"]["annotator"]["calls"] == 3
    assert len(requests) == 3
    assert all(r["response_format"] == {"type": "json_object"} for r in requests)
    assert "Evidence points at assistant or tool steps" in requests[0]["messages"][0]["content"]
    assert "--- turn 0, step 0, user.content ---" in requests[0]["messages"][1]["content"]
    assert any("step 1, assistant.tool_calls ---" in r["messages"][1]["content"] for r in requests)


def test_annotate_never_sends_records_with_problems_outside_their_checklists(tmp_path, gold):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    broken = valid_record("unknown-tool")
    broken["messages"][2]["tool_calls"][0]["function"]["name"] = "GetWether"
    source.write_text(json.dumps(broken) + "\n" + "{not json\n")
    with ScriptedServer() as srv:
        result = cm2("annotate", str(source), str(out), "--llm", srv.spec)
        assert srv.requests == []
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out.jsonl.report.json").read_text())
    assert (report["input_records"], report["invalid_input"], report["written"]) == (2, 2, 0)
    first, second = report["invalid_examples"]
    assert first["id"] == "unknown-tool" and "unknown tool 'GetWether'" in first["reasons"][0]
    assert second["line"] == 2 and "invalid JSON" in second["reasons"][0]


def test_a_rerun_skips_records_already_written_and_sends_nothing(tmp_path, gold):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_without_checklists(source, gold.values())
    with ScriptedServer(lambda request: json.dumps(gold_answer(dialogue_of(request, gold)))) as srv:
        assert cm2("annotate", str(source), str(out), "--llm", srv.spec, "--limit", "1").exit_code == 0
        assert len(lines(out)) == 1 and len(srv.requests) == 1
        with out.open("a") as f:
            f.write('{"id": "half a line')  # an interrupted write
        assert cm2("annotate", str(source), str(out), "--llm", srv.spec).exit_code == 0
        assert len(srv.requests) == 3
        assert cm2("annotate", str(source), str(out), "--llm", srv.spec).exit_code == 0
        assert len(srv.requests) == 3
    assert sorted(r["id"] for r in lines(out)) == sorted(d.id for d in gold.values())
    assert json.loads((tmp_path / "out.jsonl.report.json").read_text())["already_done"] == 3


def test_a_bad_first_answer_is_repaired_in_the_second_round(gold):
    dialogue = next(iter(gold.values()))
    bad = copy.deepcopy(gold_answer(dialogue))
    first_item = bad["turns"][0]["items"][0]
    first_item["weight"] += 0.5  # the turn now sums to 1.5
    first_item["evidence"][0]["snippet"] = "a snippet that is nowhere in the dialogue"
    answers = iter([f"Here is the checklist:\n```json\n{json.dumps(bad)}\n```", json.dumps(gold_answer(dialogue))])
    with ScriptedServer(lambda request: next(answers)) as srv:
        client = make_client(srv.spec, role="annotator", max_retries=0)
        result = asyncio.run(annotate_dialogue(client, dialogue))
        requests = list(srv.requests)
    assert result.ok and result.repaired and result.rounds == 2
    assert result.record["checklists"] == dialogue.to_record()["checklists"]
    assert any("sum to 1.5" in p for p in result.first_problems)
    assert any("turn 0, item 0 (C0), evidence.0.snippet: not a verbatim substring" in p for p in result.first_problems)
    repair = requests[1]["messages"]
    assert repair[:2] == requests[0]["messages"]
    assert repair[2]["role"] == "assistant" and "a snippet that is nowhere" in repair[2]["content"]
    assert "not a verbatim substring" in repair[3]["content"] and "sum to 1.5" in repair[3]["content"]


def test_garbage_answers_are_reported_with_their_problems_and_never_written(tmp_path, gold):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    records = write_without_checklists(source, gold.values())
    garbage_id = records[1]["id"]
    garbage_user = next(m["content"] for m in records[1]["messages"] if m["role"] == "user")

    def responder(request):
        if garbage_user in request["messages"][1]["content"]:
            return "I am sorry, I cannot produce a checklist for this."
        return json.dumps(gold_answer(dialogue_of(request, gold)))

    with ScriptedServer(responder) as srv:
        result = cm2("annotate", str(source), str(out), "--llm", srv.spec)
        assert len(srv.requests) == 4  # two good dialogues, the garbage one twice (answer + repair round)
    assert result.exit_code == 0, result.output
    assert garbage_id not in {r["id"] for r in lines(out)} and len(lines(out)) == 2
    rejected = lines(tmp_path / "out.jsonl.rejected.jsonl")
    assert [r["id"] for r in rejected] == [garbage_id]
    assert "not valid JSON" in rejected[0]["reasons"][0]
    report = json.loads((tmp_path / "out.jsonl.report.json").read_text())
    assert (report["written"], report["rejected"]) == (2, 1)
    assert report["rejected_examples"][0]["id"] == garbage_id


def test_items_that_still_fail_after_the_repair_round_are_reported_not_written(gold):
    dialogue = next(iter(gold.values()))
    bad = gold_answer(dialogue)
    bad["turns"][0]["items"][1]["dependence"] = ["C0"]  # C0 focuses on tool calls: not a valid dependency
    bad["turns"][0]["items"][1]["evidence"][0]["from"] = "user.content"
    with ScriptedServer(lambda request: json.dumps(bad)) as srv:
        result = asyncio.run(annotate_dialogue(make_client(srv.spec, max_retries=0), dialogue))
    assert not result.ok and result.record is None and result.rounds == 2
    assert any("dependence.0: depends on 'C0'" in p for p in result.problems)
    assert any("evidence points at the user message" in p for p in result.problems)


def test_rounding_level_weight_sums_are_rescaled_and_unknown_keys_dropped():
    items = [{"id": f"C{i}", "weight": 0.33, "note": "x", "evidence": [{"turn": 0, "why": 1}]} for i in range(3)]
    (tidy,) = tidy_variant([items])
    assert abs(sum(item["weight"] for item in tidy) - 1) < 1e-9
    assert "note" not in tidy[0] and tidy[0]["evidence"] == [{"turn": 0}]
    far = [{"id": "C0", "weight": 0.5}, {"id": "C1", "weight": 0.3}]
    assert tidy_variant([far]) == [far]  # 0.8 is a real mistake: sent back, not silently fixed


# --- LLM filter ------------------------------------------------------------------------------------------


def two_records():
    keep, drop = valid_record("keep-me"), valid_record("drop-me")
    keep.pop("checklists"), drop.pop("checklists")
    drop["messages"][1]["content"] = "What is the weather in Rome?"
    return keep, drop


def review_responder(false_at: dict):
    """NoError=true, except for the record whose user message holds a key of ``false_at`` at that effort."""
    def responder(request):
        prompt = request["messages"][1]["content"]
        for marker, effort in false_at.items():
            if marker in prompt and request["reasoning_effort"] == effort:
                return json.dumps({"errors": ["turn 0, step 1: the call asks for Paris, not Rome"], "NoError": False})
        return '{"errors": [], "NoError": true}'
    return responder


def efforts_for(requests, marker):
    return [r["reasoning_effort"] for r in requests if marker in r["messages"][1]["content"]]


def test_llm_filter_runs_passes_in_rising_effort_and_drops_on_any_false(tmp_path):
    keep, drop = two_records()
    source, out = tmp_path / "in.jsonl", tmp_path / "kept.jsonl"
    source.write_text(json.dumps(keep) + "\n" + json.dumps(drop) + "\n")
    with ScriptedServer(review_responder({"Rome": "high"})) as srv:
        result = cm2("llm-filter", str(source), str(out), "--llm", srv.spec, "--concurrency", "1")
        requests = list(srv.requests)
    assert result.exit_code == 0, result.output
    assert efforts_for(requests, "Paris?") == ["low", "medium", "high"]
    assert efforts_for(requests, "Rome?") == ["low", "medium", "high"]
    assert lines(out) == [keep]  # kept records are written unchanged
    rejected = lines(tmp_path / "kept.jsonl.rejected.jsonl")
    assert [r["id"] for r in rejected] == ["drop-me"]
    assert rejected[0]["reasons"] == ["[high] turn 0, step 1: the call asks for Paris, not Rome"]
    assert [p["no_error"] for p in rejected[0]["passes"]] == [True, True, False]
    report = json.loads((tmp_path / "kept.jsonl.report.json").read_text())
    assert report["counts"]["pass:high:error"] == 1 and report["counts"]["pass:high:no_error"] == 1


def test_llm_filter_stops_at_the_first_false_and_honours_custom_passes(tmp_path):
    keep, drop = two_records()
    source, out = tmp_path / "in.jsonl", tmp_path / "kept.jsonl"
    source.write_text(json.dumps(keep) + "\n" + json.dumps(drop) + "\n")
    with ScriptedServer(review_responder({"Rome": "low"})) as srv:
        result = cm2("llm-filter", str(source), str(out), "--llm", srv.spec, "--passes", "low,high")
        requests = list(srv.requests)
    assert result.exit_code == 0, result.output
    assert efforts_for(requests, "Rome?") == ["low"]
    assert efforts_for(requests, "Paris?") == ["low", "high"]
    assert [r["id"] for r in lines(out)] == ["keep-me"]


def test_an_unparsable_review_is_asked_again_then_left_undecided_and_retried_by_the_next_run(tmp_path):
    keep, _ = two_records()
    source, out = tmp_path / "in.jsonl", tmp_path / "kept.jsonl"
    source.write_text(json.dumps(keep) + "\n")
    with ScriptedServer(lambda request: "Looks fine to me!") as srv:
        result = CliRunner().invoke(main, ["data", "llm-filter", str(source), str(out), "--llm", srv.spec])
        assert len(srv.requests) == 2  # one pass, asked twice, never a verdict
        assert result.exit_code == 1 and "run the same command again" in result.output
        assert lines(out) == [] and lines(tmp_path / "kept.jsonl.rejected.jsonl") == []
        srv.responder = review_responder({})
        assert cm2("llm-filter", str(source), str(out), "--llm", srv.spec).exit_code == 0
    assert lines(out) == [keep]


def test_parse_review_reads_spellings_of_no_error_and_never_raises():
    assert parse_review({"NoError": False, "errors": "bad call"}) == (False, ["bad call"])
    assert parse_review({"no_error": "true"}) == (True, [])
    assert parse_review({"noError": 1}) == (None, [])
    assert parse_review(["NoError", True]) == (None, [])
    assert parse_review(None) == (None, [])


def test_an_llm_error_marks_the_record_failed_and_it_is_not_rejected(tmp_path):
    keep, _ = two_records()
    source, out = tmp_path / "in.jsonl", tmp_path / "kept.jsonl"
    source.write_text(json.dumps(keep) + "\n")
    with ScriptedServer(lambda request: Fault.http(400, message="bad request")) as srv:
        result = CliRunner().invoke(main, ["data", "llm-filter", str(source), str(out), "--llm", srv.spec])
    assert result.exit_code == 1
    report = json.loads((tmp_path / "kept.jsonl.report.json").read_text())
    assert report["failed"] == 1 and "HTTP 400" in report["failed_examples"][0]["reasons"][0]
    assert lines(tmp_path / "kept.jsonl.rejected.jsonl") == []


# --- CoT compression -------------------------------------------------------------------------------------

LONG_PLAN = ("The user asks about the weather in Paris. I have a GetWeather tool that takes a city. "
             "I should call it with city Paris and then report the temperature back to the user. ")


def thinking_record() -> dict:
    record = valid_record("think")
    record.pop("checklists")
    record["messages"][2]["content"] = f"<think>\n{(LONG_PLAN * 2).strip()}\n</think>\n\n"
    record["messages"][4]["content"] = f"<think>\n{LONG_PLAN}The tool says 21.\n</think>\n\nIt is 21 degrees in Paris."
    return record


def rewriting_responder(change=lambda outside: outside):
    """Shortens the thinking of the presented message; ``change`` edits what follows ``</think>``."""
    def responder(request):
        presented = request["messages"][1]["content"].split("=== assistant message ===\n", 1)[1]
        outside = presented.split("</think>", 1)[1]
        return f"<think>Call GetWeather for Paris, report it.</think>{change(outside)}"
    return responder


def test_compression_shortens_thinking_and_keeps_calls_and_replies_byte_identical(tmp_path):
    record = thinking_record()
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps(record) + "\n")
    with ScriptedServer(rewriting_responder()) as srv:
        result = cm2("compress-cot", str(source), str(out), "--llm", srv.spec)
        assert len(srv.requests) == 2
    assert result.exit_code == 0, result.output
    (written,) = lines(out)
    for i in (2, 4):
        assert re.fullmatch(r"<think>\nCall GetWeather for Paris, report it.\n</think>\n\n.*",
                            written["messages"][i]["content"], re.DOTALL)
    assert written["messages"][4]["content"].endswith("</think>\n\nIt is 21 degrees in Paris.")
    unchanged = copy.deepcopy(written)
    for i in (2, 4):
        unchanged["messages"][i]["content"] = record["messages"][i]["content"]
    assert unchanged == record
    report = json.loads((tmp_path / "out.jsonl.report.json").read_text())
    assert report["counts"]["compressed"] == 2 and report["counts"]["chars_after"] < report["counts"]["chars_before"]


def test_compression_that_changes_a_tool_call_is_rejected_and_the_original_kept():
    record = thinking_record()
    changed = rewriting_responder(lambda outside: outside.replace("Paris", "Lyon"))
    with ScriptedServer(changed) as srv:
        result = asyncio.run(compress_dialogue(make_client(srv.spec, max_retries=0), Dialogue.model_validate(record),
                                               record, attempts=2))
        assert len(srv.requests) == 4  # both blocks, both attempts
    assert result.record == record
    assert [(b.status, b.reason) for b in result.blocks] == [("rejected", "changed_tool_calls"),
                                                             ("rejected", "changed_reply")]


def test_check_rewrite_accepts_only_a_shorter_single_think_block_with_the_rest_unchanged():
    message = thinking_record()["messages"][2]
    presented = presented_message(message)
    rest = presented.split("</think>", 1)[1]
    assert check_rewrite(presented, f"<think>short</think>{rest}") == ("short", "")
    assert check_rewrite(presented, f"```\n<think>short</think>{rest}\n```") == ("short", "")
    assert check_rewrite(presented, f"<think>{LONG_PLAN * 3}</think>{rest}") == (None, "not_shorter")
    assert check_rewrite(presented, f"<think> </think>{rest}") == (None, "empty_thinking")
    assert check_rewrite(presented, f"<think>a</think><think>b</think>{rest}") == (None, "no_single_think_block")
    assert check_rewrite(presented, f"<think>short <tool_call></think>{rest}") == (None, "tags_in_thinking")
    assert check_rewrite(presented, f"<think>short</think>{rest} Anything else?")[1] == "changed_reply"
    assert check_rewrite(presented, "no thinking at all")[1] == "no_single_think_block"


def test_short_thinking_and_thinking_quoted_as_evidence_are_left_alone():
    record = thinking_record()
    record["messages"][2]["content"] = "<think>Call it.</think>"
    dialogue_record = copy.deepcopy(record)
    dialogue_record["checklists"] = valid_record("x")["checklists"]
    dialogue_record["checklists"][0][0][2]["evidence"].append(
        {"turn": 0, "step": 3, "from": "assistant.content.thinking", "snippet": "The tool says 21."})
    with ScriptedServer(rewriting_responder()) as srv:
        result = asyncio.run(compress_dialogue(make_client(srv.spec, max_retries=0),
                                               Dialogue.model_validate(dialogue_record), record))
        assert srv.requests == []
    assert [(b.status, b.reason) for b in result.blocks] == [("skipped", "short_thinking"),
                                                             ("skipped", "evidence_in_thinking")]
    assert result.record == record


# --- layering --------------------------------------------------------------------------------------------


def test_cm2_data_validate_does_not_import_the_llm_layer():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom cm2_env.cli import main\n"
            "result = CliRunner().invoke(main, ['data', 'validate', 'tooltalk'])\nassert result.exit_code == 0\n"
            "print(sorted(m for m in sys.modules if m.startswith(('cm2_env.llm', 'cm2_env.annotate', 'openai'))))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
