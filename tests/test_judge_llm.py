"""The LLM checklist judge (and the hybrid judge) against the scripted OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json
import re

from cm2_env.data import load_dialogues, split_turns
from cm2_env.judge import HybridJudge, JudgeRequest, LLMChecklistJudge, make_judge
from cm2_env.llm import make_client
from tests.support.scripted_server import Fault, ScriptedServer

DIALOGUE = load_dialogues("tooltalk")[3]
TURN = 0
ITEMS = DIALOGUE.checklist()[TURN]


def _request(items=ITEMS, dialogue=DIALOGUE, turn=TURN):
    t = split_turns(dialogue.messages)[turn]
    return JudgeRequest(dialogue, turn, len(t.actions), list(items),
                        [m.model_dump(mode="json", exclude_none=True) for m in dialogue.messages[: t.start]],
                        [m.model_dump(mode="json", exclude_none=True) for m in t.messages])


def _asked_ids(request_body):
    return re.findall(r"^### Item (\S+)", request_body["messages"][-1]["content"], re.MULTILINE)


def _answer(passed, **extra):
    return {"evidence_analysis": "e", "focus_analysis": "f", "pass_analysis": "p", "failure_analysis": "x",
            "answer": passed, **extra}


def _judge(server, **options):
    client = make_client(server.spec, role="judge", max_retries=options.pop("max_retries", 0),
                         timeout_s=options.pop("timeout_s", 10))
    return LLMChecklistJudge(client, **options)


def test_single_item_requests_give_one_verdict_per_item_with_the_analysis_fields():
    def responder(body):
        item_id = _asked_ids(body)[0]
        return "```json\n" + json.dumps(_answer(item_id == "C0")) + "\n```"

    with ScriptedServer(responder) as server:
        judge = _judge(server)
        verdicts = asyncio.run(judge.judge(_request()))
        assert len(server.requests) == len(ITEMS)
    assert verdicts["C0"].passed is True and all(v.passed is False for k, v in verdicts.items() if k != "C0")
    assert verdicts["C0"].source == "llm" and verdicts["C0"].details["pass_analysis"] == "p"
    assert judge.usage()["llm_calls"] == len(ITEMS) and judge.usage()["prompt_tokens"] > 0


def test_the_prompt_holds_the_item_the_history_the_current_turn_and_the_rules():
    with ScriptedServer(lambda body: json.dumps(_answer(True))) as server:
        asyncio.run(_judge(server).judge(_request(ITEMS[:1])))
        system, user = (m["content"] for m in server.requests[0]["messages"])
    item = ITEMS[0]
    assert "only inside the assistant's" in system and "error or exception invalidates" in system
    for text in (item.question, item.pass_condition, item.evidence[0].snippet, *item.failure_examples):
        assert text in user
    assert split_turns(DIALOGUE.messages)[TURN].messages[0].content in user
    assert '"answer": true or false' in user


def test_malformed_answers_become_error_verdicts_after_the_attempts_never_exceptions():
    with ScriptedServer(lambda body: "I think it passes, probably {answer: maybe}") as server:
        judge = _judge(server, attempts=2)
        verdicts = asyncio.run(judge.judge(_request(ITEMS[:2])))
        assert len(server.requests) == 4  # 2 items x 2 attempts, each attempt a distinct request
    assert all(v.passed is None and "unparsable" in v.error for v in verdicts.values())
    assert judge.usage()["errors"] == 2


def test_transport_faults_and_timeouts_become_error_verdicts():
    with ScriptedServer(lambda body: Fault.stall(2.0)) as server:
        verdicts = asyncio.run(_judge(server, timeout_s=0.3).judge(_request(ITEMS[:1])))
    assert verdicts[ITEMS[0].id].passed is None and "failed" in verdicts[ITEMS[0].id].error
    with ScriptedServer(lambda body: Fault.garbage()) as server:
        verdicts = asyncio.run(_judge(server).judge(_request(ITEMS[:1])))
    assert verdicts[ITEMS[0].id].passed is None
    with ScriptedServer(lambda body: Fault.http(500)) as server:
        verdicts = asyncio.run(_judge(server).judge(_request(ITEMS[:1])))
    assert verdicts[ITEMS[0].id].passed is None


def test_votes_take_the_majority_and_record_the_agreement():
    def responder(body):
        return json.dumps(_answer(body["seed"] % 3 != 2))  # seeds 0, 1 say yes; seed 2 says no

    with ScriptedServer(responder) as server:
        verdicts = asyncio.run(_judge(server, votes=3, temperature=1.0).judge(_request(ITEMS[:1])))
        seeds = sorted(body["seed"] for body in server.requests)
        temperatures = {body["temperature"] for body in server.requests}
    verdict = verdicts[ITEMS[0].id]
    assert verdict.passed is True and abs(verdict.agreement - 2 / 3) < 1e-9
    assert seeds == [0, 1, 2] and temperatures == {1.0}


def test_batching_asks_all_items_of_an_action_in_one_request():
    def responder(body):
        ids = _asked_ids(body)
        return json.dumps({"verdicts": [{"id": i, **_answer(i != "C1")} for i in ids]})

    with ScriptedServer(responder) as server:
        verdicts = asyncio.run(_judge(server, batch_items=True).judge(_request()))
        assert len(server.requests) == 1 and _asked_ids(server.requests[0]) == [i.id for i in ITEMS]
    assert {k: v.passed for k, v in verdicts.items()} == {i.id: i.id != "C1" for i in ITEMS}


def test_a_batch_answer_missing_an_item_is_asked_again_then_gives_an_error_for_that_item_only():
    def responder(body):
        return json.dumps({"verdicts": [{"id": i, **_answer(True)} for i in _asked_ids(body)[:-1]]})

    with ScriptedServer(responder) as server:
        verdicts = asyncio.run(_judge(server, batch_items=True, attempts=2).judge(_request()))
    last = ITEMS[-1].id
    assert verdicts[last].passed is None and last in verdicts[last].error
    assert all(v.passed for k, v in verdicts.items() if k != last)


def test_identical_requests_are_never_repeated():
    with ScriptedServer(lambda body: json.dumps(_answer(True))) as server:
        judge = _judge(server, votes=2)

        async def twice():
            await asyncio.gather(judge.judge(_request()), judge.judge(_request()))
            await judge.judge(_request())

        asyncio.run(twice())
        bodies = [json.dumps(b, sort_keys=True) for b in server.requests]
    assert len(bodies) == len(ITEMS) * 2 and len(set(bodies)) == len(bodies)
    assert judge.usage()["cache_hits"] == len(ITEMS) * 2 * 2


def test_the_hybrid_judge_asks_the_llm_only_where_the_rules_are_unsure_and_counts_the_saving():
    dialogue = load_dialogues("tooltalk")[0]
    items = dialogue.checklist()[6]  # tool calls and results (rules are sure) and a reply item (rules are not)
    with ScriptedServer(lambda body: json.dumps({"verdicts": [{"id": i, **_answer(True)} for i in _asked_ids(body)]})
                        if len(_asked_ids(body)) > 1 else json.dumps(_answer(True))) as server:
        judge = make_judge(f"hybrid:{server.spec}", llm_options={"max_retries": 0})
        assert isinstance(judge, HybridJudge)
        verdicts = asyncio.run(judge.judge(_request(items, dialogue, 6)))
        asked = sum(len(_asked_ids(b)) for b in server.requests)
    usage = judge.usage()
    assert set(verdicts) == {i.id for i in items}
    assert usage["rule_items"] + usage["llm_items"] == len(items) and usage["llm_items"] == asked > 0
    assert usage["llm_items_saved"] == usage["rule_items"] > 0
    assert {v.source for k, v in verdicts.items()} <= {"rule", "llm"}
