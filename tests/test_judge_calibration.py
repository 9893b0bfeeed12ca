"""The judge-calibration evaluator: sticky judging per action, metrics on a hand-built case, and the CLI."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from cm2_env.cli import main
from cm2_env.data import DatasetError, load_dialogues
from cm2_env.judge import JudgeRequest, Verdict
from cm2_env.judge.calibration import (CalibrationCase, GoldVerdict, evaluate, gold_first_action, judge_case,
                                       load_calibration)

ITEM = {"evidence": [], "question": "q", "pass_condition": "", "failure_examples": [], "dependence": []}
DIALOGUE = load_dialogues([{
    "id": "tiny", "tools": [],
    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    "checklists": [[[{**ITEM, "id": "C0", "focus_on": "assistant.tool_calls", "weight": 0.5},
                     {**ITEM, "id": "C1", "focus_on": "assistant.content.user_visible_reply", "weight": 0.5}]]],
}])[0]
CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "a", "type": "function", "function": {"name": "Look", "arguments": "{}"}}]}
RESPONSE = {"role": "tool", "tool_call_id": "a", "name": "Look", "content": "{}"}
REPLY = {"role": "assistant", "content": "done"}


class ScriptedJudge:
    """A test double judge: C0 passes once a call is in the transcript, C1 passes never; records requests."""

    def __init__(self):
        self.requests: list[JudgeRequest] = []

    async def judge(self, request):
        self.requests.append(request)
        called = any(m.get("tool_calls") for m in request.current)
        return {i.id: Verdict(i.id, called if i.id == "C0" else False, "llm", agreement=0.5) for i in request.items}

    def usage(self):
        return {"llm_calls": len(self.requests), "prompt_tokens": 7, "completion_tokens": 3}


def _case(kind, messages, c0, c1, first=None):
    return CalibrationCase(f"tiny#t0#{kind}", "tiny", 0, kind, messages,
                           [GoldVerdict("C0", c0, first), GoldVerdict("C1", c1, 1 if c1 else None)])


def test_judging_is_sticky_and_only_asks_about_items_not_yet_satisfied():
    judge = ScriptedJudge()
    result = asyncio.run(judge_case(judge, _case("a", [CALL, RESPONSE, REPLY], True, False, 1), DIALOGUE))
    assert [len(r.items) for r in judge.requests] == [2, 1]
    assert [len(r.current) for r in judge.requests] == [3, 4]  # user + call + response; then + reply
    assert result.passed == {"C0": True, "C1": False} and result.first_action == {"C0": 1, "C1": None}


def test_the_metrics_of_a_small_hand_built_case():
    cases = [_case("good", [CALL, RESPONSE, REPLY], True, False, 1),    # C0 right (TP), C1 right (TN)
             _case("flaw", [REPLY], False, True),                        # C0 right (TN), C1 wrong (FN)
             _case("late", [REPLY, CALL, RESPONSE], True, False, 1)]     # C0 right (TP) but first at action 2
    report = asyncio.run(evaluate(ScriptedJudge(), cases, [DIALOGUE])).to_dict()
    assert report["n"] == 6 and report["accuracy"] == pytest.approx(5 / 6)
    assert report["precision"] == 1.0 and report["recall"] == pytest.approx(2 / 3)
    assert report["by_kind"]["flaw"]["accuracy"] == 0.5
    assert report["by_focus"]["assistant.tool_calls"]["accuracy"] == 1.0
    assert report["first_action_agreement"] == {"n": 2, "rate": 0.5}
    assert report["vote_agreement"] == 0.5 and report["usage"]["llm_calls"] == 5


def test_verdict_errors_count_as_wrong_answers_and_are_reported():
    class FailingJudge(ScriptedJudge):
        async def judge(self, request):
            return {i.id: Verdict(i.id, None, "llm", error="boom") for i in request.items}

    report = asyncio.run(evaluate(FailingJudge(), [_case("x", [REPLY], False, False)], [DIALOGUE])).to_dict()
    assert report["errors"] == 2 and report["accuracy"] == 0.0


def test_the_gold_first_step_maps_to_the_action_holding_that_message():
    case = _case("a", [CALL, RESPONSE, CALL, RESPONSE, REPLY], True, True)
    assert [gold_first_action(case, s) for s in (1, 2, 3, 4, 5, None)] == [1, 1, 2, 2, 3, None]


def test_a_bad_calibration_record_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "x", "dialogue_id": "d", "turn": 0, "messages": [],
                                "verdicts": [{"id": "C0"}]}) + "\n")
    with pytest.raises(DatasetError) as error:
        load_calibration(path)
    assert "bad.jsonl:1" in str(error.value) and "verdicts.0" in str(error.value)


def test_the_cli_reports_the_rule_judge_as_an_approximation_and_ends_with_a_json_line():
    result = CliRunner().invoke(main, ["judge", "eval", "--judge", "rule", "--limit", "12", "--json"])
    assert result.exit_code == 0, result.output
    last = json.loads(result.output.strip().splitlines()[-1])
    assert last["n"] > 0 and 0.0 <= last["accuracy"] <= 1.0 and last["cases"] == 12
    assert "approximation" in result.output.lower()
    assert set(last["by_focus"]) and set(last["by_kind"])


def test_the_rule_judge_on_the_bundled_calibration_set_keeps_its_accuracy_and_its_confident_verdicts_are_better():
    report = asyncio.run(evaluate(__import__("cm2_env.judge", fromlist=["RuleJudge"]).RuleJudge(),
                                  load_calibration(), load_dialogues("tooltalk"))).to_dict()
    always_pass = 0.63  # the README: 63% of the gold verdicts pass
    assert report["n"] == 1038 and report["accuracy"] > always_pass + 0.1
    # hardening the rules against gaming must not cost accuracy: 0.889 before the hardening
    assert report["accuracy"] >= 0.889
    confident = report["confident"]
    assert confident["accuracy"] > report["accuracy"] and 0.2 < confident["share_below"] < 0.6


def test_the_cli_runs_an_llm_judge_and_reports_its_calls_and_tokens():
    import re

    from tests.support.scripted_server import ScriptedServer

    def responder(body):
        ids = re.findall(r"^### Item (\S+)", body["messages"][-1]["content"], re.MULTILINE)
        return json.dumps({"verdicts": [{"id": i, "answer": True} for i in ids]})

    with ScriptedServer(responder) as server:
        result = CliRunner().invoke(main, ["judge", "eval", "--judge", server.spec, "--limit", "3", "--json",
                                           "--batch-items", "--votes", "3"])
    assert result.exit_code == 0, result.output
    last = json.loads(result.output.strip().splitlines()[-1])
    assert last["usage"]["llm_calls"] == len(server.requests) > 0 and last["usage"]["prompt_tokens"] > 0
    assert last["vote_agreement"] == 1.0 and last["recall"] == 1.0


def test_the_calibration_harness_and_the_env_read_a_garbled_judge_answer_the_same_way():
    """One judging step (judge_all): an answer that decides nothing is an error in calibration and an episode
    failure in the env, never a pass or a fail."""
    import gymnasium as gym

    import cm2_env  # noqa: F401 - registers the env

    class GarbledJudge(ScriptedJudge):
        async def judge(self, request):
            super_answer = await super().judge(request)
            return {**super_answer, "C1": Verdict("C1", "yes", "llm")}  # passed is not a bool

    result = asyncio.run(judge_case(GarbledJudge(), _case("g", [REPLY], False, False), DIALOGUE))
    assert result.passed == {"C0": False, "C1": None} and result.errors == ["undecided verdict"]
    env = gym.make("CM2ToolUse-v0", dataset=[DIALOGUE], judge=GarbledJudge())
    env.reset(seed=0)
    info = env.step("done")[4]
    assert info["failed"] is True and "judge failed on item C1 of turn 0: undecided verdict" in info["failure"]
    env.close()
