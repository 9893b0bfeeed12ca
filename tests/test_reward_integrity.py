"""Reward integrity: holes through which a policy could collect checklist reward without doing the work, or see
data it has not created yet. One regression test per hole; each failed on the code before its fix."""

from __future__ import annotations

import asyncio
import json

import gymnasium as gym
import pytest

import cm2_env  # noqa: F401  (registers CM2ToolUse-v0)
from cm2_env.data import load_dialogues
from cm2_env.judge.base import JudgeRequest
from cm2_env.judge.llm import build_prompt
from cm2_env.simulator import make_simulator, recorded_calls

DIALOGUES = {d.id: d for d in load_dialogues("tooltalk")}
REGISTER = "tooltalk/AccountTools-Calendar-Weather-RegisterUser-0"


def run(coroutine):
    return asyncio.run(coroutine)


# -- hole 1: a malformed call is not the end of the turn --------------------------------------------------------


def test_a_malformed_call_is_never_a_final_reply_for_the_env_or_the_judges():
    env = gym.make("CM2ToolUse-v0")
    _, info = env.reset(options={"dialogue_id": REGISTER})
    # turn 0, C1: "refrain from creating a calendar event before the user had given a meeting time" (avoid item)
    _, _, terminated, truncated, info = env.step('<tool_call>\n{"name": "CreateEvent", "arguments": {"name": \n'
                                                 "</tool_call>")
    assert not (terminated or truncated) and info["turn"] == 0
    assert info["verdicts"][0]["C1"]["passed"] is False  # an avoid item is decided at the final reply only
    assert info["verdicts"][0]["C2"]["passed"] is False
    request = JudgeRequest(DIALOGUES[REGISTER], 0, 1, DIALOGUES[REGISTER].checklists[0][0],
                           info["messages"][:2], info["messages"][2:])
    assert not request.turn_complete
    assert "in progress" in build_prompt(request, request.items[:1])[0][1]["content"]
    # the forbidden thing afterwards, then a reply: the avoid item must not have kept an earlier credit
    env.step('<tool_call>\n{"name": "CreateEvent", "arguments": {"name": "1:1 with Olivie", "event_type": '
             '"meeting", "start_time": "2023-09-13 10:00:00", "end_time": "2023-09-13 10:30:00"}}\n</tool_call>')
    _, _, _, _, info = env.step("I have scheduled it.")
    assert info["verdicts"][0]["C1"]["passed"] is False
    env.close()


# -- hole 2: replay never serves the future ---------------------------------------------------------------------


def _calendar_dialogue():
    """Turn 0 reads an empty calendar; turn 1 creates an event; turn 2 reads it back with the same call."""
    query = {"start_time": "2023-09-12 00:00:00", "end_time": "2023-09-12 23:59:59"}
    create = {"name": "Sync", "start_time": "2023-09-12 10:00:00", "end_time": "2023-09-12 11:00:00"}
    tools = [{"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {
        k: {"type": "string"} for k in args}, "required": list(args)}}} for name, args in
        (("QueryCalendar", query), ("CreateEvent", create))]

    def call(i, name, args, result):
        return [{"role": "assistant", "content": "", "tool_calls": [{"id": f"c{i}", "type": "function", "function": {
            "name": name, "arguments": json.dumps(args)}}]},
            {"role": "tool", "tool_call_id": f"c{i}", "name": name, "content": json.dumps(result)}]

    messages = [{"role": "user", "content": "What is on my calendar on Sept 12?"},
                *call(0, "QueryCalendar", query, {"events": []}), {"role": "assistant", "content": "Nothing."},
                {"role": "user", "content": "Add a Sync at 10."},
                *call(1, "CreateEvent", create, {"event_id": "e-1"}), {"role": "assistant", "content": "Added."},
                {"role": "user", "content": "And now?"},
                *call(2, "QueryCalendar", query, {"events": [{"name": "Sync", "event_id": "e-1"}]}),
                {"role": "assistant", "content": "The Sync at 10."}]
    return load_dialogues([{"id": "calendar", "tools": tools, "messages": messages}])[0], query, create


def test_a_repeated_read_gets_the_state_at_the_agents_position_not_a_later_turns():
    dialogue, query, create = _calendar_dialogue()
    episode = make_simulator("replay").start_episode(dialogue)
    first = run(episode.execute("QueryCalendar", query, turn=0))
    again = run(episode.execute("QueryCalendar", query, turn=0))
    assert json.loads(first.content) == json.loads(again.content) == {"events": []}
    assert run(episode.execute("CreateEvent", create, turn=1)).source == "replay"
    later = run(episode.execute("QueryCalendar", query, turn=2))
    assert json.loads(later.content)["events"][0]["event_id"] == "e-1"


def test_a_call_recorded_only_in_a_later_turn_is_not_replayed_early():
    dialogue = DIALOGUES[REGISTER]
    later = [c for c in recorded_calls(dialogue) if c.turn > 0]
    episode = make_simulator("replay").start_episode(dialogue)
    result = run(episode.execute(later[0].name, later[0].arguments, turn=0))
    assert result.source == "no_simulator" and result.content != later[0].response


def test_the_fewshot_examples_never_show_the_current_turns_later_reference_calls():
    dialogue, query, create = _calendar_dialogue()
    simulator = make_simulator("replay")
    simulator.fewshot = "prefix"
    episode = simulator.start_episode(dialogue)
    prompt = episode.prompt("QueryCalendar", {"start_time": "x", "end_time": "y"}, 0)[1]["content"]
    assert "events" not in prompt  # turn 0's own recording is not reached yet, later ones never
    run(episode.execute("QueryCalendar", query, turn=0))
    prompt = episode.prompt("QueryCalendar", {"start_time": "x", "end_time": "y"}, 0)[1]["content"]
    assert '"events": []' in prompt and "e-1" not in prompt


# -- hole 4: the LLM judge sees all the evidence and keeps its answers ----------------------------------------


def _judge_request(tool_output: str):
    from cm2_env.data import split_turns

    dialogue = DIALOGUES[REGISTER]
    turn = split_turns(dialogue.messages)[0]
    history = [m.model_dump(mode="json", exclude_none=True) for m in dialogue.messages[:turn.start]]
    current = [turn.messages[0].model_dump(mode="json", exclude_none=True),
               {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {
                   "name": "QueryCalendar", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "c1", "name": "QueryCalendar", "content": tool_output},
               {"role": "assistant", "content": "Done."}]
    return JudgeRequest(dialogue, 0, 2, dialogue.checklist()[0][:1], history, current)


def _llm_judge(server, **options):
    from cm2_env.judge import LLMChecklistJudge
    from cm2_env.llm import make_client

    return LLMChecklistJudge(make_client(server.spec, role="judge", max_retries=0, timeout_s=10), **options)


def _verdict(answer: bool) -> str:
    return json.dumps({"evidence_analysis": "", "focus_analysis": "", "pass_analysis": "", "failure_analysis": "",
                       "answer": answer})


def test_a_fact_late_in_a_long_tool_output_reaches_the_llm_judge():
    from tests.support.scripted_server import ScriptedServer

    output = json.dumps({"events": ["filler " * 2000, "THE-LATE-FACT"]})
    with ScriptedServer(lambda body: _verdict(True)) as server:
        judge = _llm_judge(server)
        run(judge.judge(_judge_request(output)))
        prompt = server.requests[0]["messages"][-1]["content"]
    assert "THE-LATE-FACT" in prompt and "characters cut" not in prompt
    assert judge.usage()["cuts"] == 0


def test_a_prompt_over_the_budget_is_cut_with_a_marker_and_counted():
    from tests.support.scripted_server import ScriptedServer

    output = json.dumps({"events": ["filler " * 2000, "THE-LATE-FACT"]})
    with ScriptedServer(lambda body: _verdict(True)) as server:
        judge = _llm_judge(server, max_prompt_chars=12_000)
        run(judge.judge(_judge_request(output)))
        messages = server.requests[0]["messages"]
    assert sum(len(m["content"]) for m in messages) <= 12_000
    assert "characters cut ...]" in messages[-1]["content"]
    assert "THE-LATE-FACT" in messages[-1]["content"]  # a cut keeps the start and the end of a text
    assert judge.usage()["cuts"] == 1


def test_the_judge_prompt_states_the_papers_decision_rule_and_requests_leave_room_for_reasoning():
    from tests.support.scripted_server import ScriptedServer

    with ScriptedServer(lambda body: _verdict(True)) as server:
        run(_llm_judge(server).judge(_judge_request("{}")))
        body = server.requests[0]
    system = body["messages"][0]["content"]
    assert "answer true only if all three hold" in system
    assert "pass condition is fully met" in system and "none of its typical failures applies" in system
    assert body["max_tokens"] >= 4096 and body["top_p"] == 0.8 and body["temperature"] == 0.6
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["properties"]["answer"] == {"type": "boolean"}


def test_a_server_without_structured_output_still_gets_an_answer_from_the_text():
    from tests.support.scripted_server import Fault, ScriptedServer

    def responder(body):
        if "response_format" in body:
            return Fault.http(400, message="response_format json_schema is not supported")
        return "Sure. " + _verdict(True)

    with ScriptedServer(responder) as server:
        verdicts = run(_llm_judge(server).judge(_judge_request("{}")))
    assert next(iter(verdicts.values())).passed is True


def test_an_unparsable_answer_is_not_cached_for_the_next_episode():
    from tests.support.scripted_server import ScriptedServer

    answers = iter(["no json here", "still none", _verdict(True)])
    with ScriptedServer(lambda body: next(answers)) as server:
        judge = _llm_judge(server, attempts=2)
        first = run(judge.judge(_judge_request("{}")))
        second = run(judge.judge(_judge_request("{}")))
    assert next(iter(first.values())).passed is None
    assert next(iter(second.values())).passed is True  # asked again, not served the cached failure
    assert len(server.requests) == 3


def test_an_answer_inside_an_unclosed_think_block_is_not_read_as_the_verdict():
    from tests.support.scripted_server import ScriptedServer

    with ScriptedServer(lambda body: "<think>Maybe " + _verdict(True) + " but let me check the") as server:
        verdicts = run(_llm_judge(server, attempts=1).judge(_judge_request("{}")))
    verdict = next(iter(verdicts.values()))
    assert verdict.passed is None and "unparsable" in verdict.error


# -- hole 5: one bad episode fails alone ---------------------------------------------------------------------


def test_a_policy_error_fails_its_episode_and_the_rest_of_the_batch_goes_on():
    from agents import EndpointAgent
    from agents.rollout import run_rollouts, summarize
    from tests.support.scripted_server import Fault, ScriptedServer

    dialogues = list(DIALOGUES.values())[:3]
    doomed = dialogues[1].messages[1].content  # the first user message of the second dialogue

    def responder(body):
        if any(m.get("content") == doomed for m in body["messages"]):
            return Fault.http(500)
        return "Could you tell me more?"

    with ScriptedServer(responder) as server:
        agent = EndpointAgent(server.spec, client_options={"max_retries": 0, "timeout_s": 10})
        results = run_rollouts(dialogues, agent, group_size=2, progress=False)
    assert len(results) == 6
    failed = [r for r in results if r.failed]
    assert {r.dialogue_id for r in failed} == {dialogues[1].id} and len(failed) == 2
    assert all("policy raised" in r.failure for r in failed) and all(r.R is None for r in failed)
    assert all(r.R is not None for r in results if not r.failed)
    assert summarize(results, dialogues)["failed"] == 2


def test_a_batch_that_fails_to_generate_is_split_so_only_the_bad_request_fails():
    from agents.token_agent import _Request
    from agents.transformers_agent import TransformersAgent
    from tests.support.tiny_models import micro_model_dir
    from train.policy import load_model, load_tokenizer

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = micro_model_dir(tmp, seed=2)
        model, tokenizer = load_model(str(path)), load_tokenizer(str(path))
    agent = TransformersAgent(model, tokenizer, max_new_tokens=4)
    good = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)

    async def main():
        loop = asyncio.get_running_loop()
        requests = [_Request(list(good), 1, loop.create_future()), _Request([10 ** 7], 2, loop.create_future()),
                    _Request(list(good), 3, loop.create_future())]
        await agent._run_batch(requests)
        return requests

    requests = run(main())
    assert requests[0].future.result()[0] and requests[2].future.result()[0]
    assert isinstance(requests[1].future.exception(), Exception)
    assert agent.batches[0] == 3 and 1 in agent.batches


# -- hole 6: malformed native tool calls get the same feedback as malformed text calls ----------------------


def test_broken_native_tool_call_arguments_are_answered_as_malformed_and_valid_calls_are_kept():
    from agents import EndpointAgent
    from cm2_env.toolcalls import parse
    from tests.support.scripted_server import ScriptedServer

    answer = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "QueryCalendar", "arguments":
                                                     '{"start_time": "2023-09-12 00:00:00"}'}},
        {"id": "b", "type": "function", "function": {"name": "CreateEvent", "arguments": '{"name": "Sync", '}}]}
    with ScriptedServer(lambda body: answer) as server:
        agent = EndpointAgent(server.spec, client_options={"max_retries": 0})
        env = gym.make("CM2ToolUse-v0")
        _, info = env.reset(options={"dialogue_id": REGISTER})
        step = run(agent.act(info["messages"], info["tools"]))
    parsed = parse(step.text)
    assert [c.name for c in parsed.calls] == ["QueryCalendar"] and parsed.errors
    _, _, terminated, truncated, info = env.step(step.text)
    assert not (terminated or truncated) and info["turn"] == 0  # not a final reply: the turn goes on
    assert any(m.get("name") == "invalid_tool_call" for m in info["messages"])
    env.close()


# -- hole 7: limits as released, labelled honestly; no reward information for the policy --------------------


def test_the_episode_action_cap_truncates_across_turns():
    env = gym.make("CM2ToolUse-v0", max_actions=3, max_actions_per_turn=30)
    env.reset(options={"dialogue_id": REGISTER})
    call = '<tool_call>\n{"name": "NoSuchTool", "arguments": {}}\n</tool_call>'
    outcomes = [env.step(call) for _ in range(3)]
    assert [o[3] for o in outcomes] == [False, False, True]
    assert outcomes[-1][4]["end_reason"] == "max_actions" and not outcomes[-1][4]["failed"]
    env.close()


def test_a_prompt_over_the_context_cap_truncates_the_episode_instead_of_crashing_it(tmp_path):
    from agents.rollout import run_rollouts
    from agents.transformers_agent import TransformersAgent
    from tests.support.tiny_models import micro_model_dir
    from train.policy import load_model, load_tokenizer

    path = micro_model_dir(tmp_path, seed=2)
    agent = TransformersAgent(load_model(str(path)), load_tokenizer(str(path)), max_new_tokens=4,
                              max_prompt_tokens=50)
    results = run_rollouts(list(DIALOGUES.values())[:2], agent, group_size=2, progress=False,
                           env_kwargs={"reward_assignment": "step"})
    assert len(results) == 4
    assert all(r.end_reason == "max_prompt_tokens" and r.truncated and not r.failed for r in results)
    assert all(r.R == sum(r.rewards) for r in results)


def test_the_policy_sees_where_it_is_but_not_how_it_is_scored():
    from agents import ReplayAgent
    from agents.rollout import run_rollouts

    seen = []

    class Recording(ReplayAgent):
        async def act(self, messages, tools, context=None):
            seen.append(dict(context))
            return await super().act(messages, tools, context)

    dialogues = [DIALOGUES[REGISTER]]
    run_rollouts(dialogues, Recording(dialogues), progress=False)
    assert seen and all(set(c) <= {"dialogue_id", "turn", "action", "reference_turns", "sampling_seed"} for c in seen)
    assert not any("verdicts" in c or "reward_record" in c or "R" in c for c in seen)
    seen.clear()
    run_rollouts(dialogues, Recording(dialogues), progress=False, share_verdicts=True)
    assert any("verdicts" in c for c in seen)


# -- hole 8: interleaved thinking -------------------------------------------------------------------------------


def test_the_interleaved_thinking_template_keeps_earlier_turns_reasoning(tmp_path):
    from tests.support.tiny_models import micro_model_dir
    from train.config import ConfigError, GRPOConfig
    from train.policy import load_tokenizer

    path = micro_model_dir(tmp_path, seed=2)
    # a stand-in for a stock template that drops the reasoning of earlier assistant turns
    dropping = ("{% for m in messages %}<|im_start|>{{ m.role }}\\n"
                "{% if m.role == 'assistant' and '</think>' in (m.content or '') %}"
                "{{ (m.content or '').split('</think>')[-1] }}{% else %}{{ m.content or '' }}{% endif %}"
                "<|im_end|>\\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}")
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = dropping
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "chat_template.jinja").write_text(dropping)
    conversation = [{"role": "user", "content": "first"},
                    {"role": "assistant", "content": "<think>\\nEARLIER-REASONING\\n</think>\\n\\nan answer"},
                    {"role": "user", "content": "second"}]

    def rendered(option):
        return load_tokenizer(str(path), option).apply_chat_template(conversation, tokenize=False,
                                                                     add_generation_prompt=True)

    assert "EARLIER-REASONING" not in rendered("")
    assert "EARLIER-REASONING" in rendered("interleaved-thinking")
    with pytest.raises(ConfigError, match="chat_template"):
        GRPOConfig(model="m", chat_template="no-such-template").validate()
