"""The hybrid tool simulator: replay, schema validation, unknown tools, the LLM fallback, its cache and prompt."""

from __future__ import annotations

import asyncio
import json

import pytest

from cm2_env.data import load_dialogues
from cm2_env.simulator import HybridToolSimulator, make_simulator, recorded_calls
from tests.support.scripted_server import ScriptedServer

DIALOGUES = load_dialogues("tooltalk")
FIRST = DIALOGUES[0]  # AccountTools-Calendar-Weather-RegisterUser-0: RegisterUser, CreateEvent (enum), ...


def run(coroutine):
    return asyncio.run(coroutine)


def test_every_recorded_call_of_the_bundled_dialogues_replays_its_recorded_response():
    simulator = make_simulator("replay")

    async def replay_all():
        checked = 0
        for dialogue in DIALOGUES:
            episode = simulator.start_episode(dialogue)
            for call in recorded_calls(dialogue):
                result = await episode.execute(call.name, call.arguments, turn=call.turn)
                assert (result.source, result.content) == ("replay", call.response), (dialogue.id, call)
                checked += 1
        return checked

    assert run(replay_all()) == 266


def _first_call(dialogue=FIRST):
    return recorded_calls(dialogue)[0]


def test_replay_ignores_key_order_but_not_value_types():
    call = _first_call()
    episode = make_simulator("replay").start_episode(FIRST)
    reordered = dict(reversed(list(call.arguments.items())))
    assert run(episode.execute(call.name, reordered, turn=call.turn)).source == "replay"
    padded = {k: f" {v} " if isinstance(v, str) else v for k, v in call.arguments.items()}
    assert run(episode.execute(call.name, padded, turn=call.turn)).source == "no_simulator"


def test_lenient_replay_forgives_surrounding_whitespace_and_numeric_strings():
    call = _first_call()
    padded = {k: f" {v} " if isinstance(v, str) else v for k, v in call.arguments.items()}
    lenient = make_simulator("replay", lenient=True).start_episode(FIRST)
    assert run(lenient.execute(call.name, padded, turn=call.turn)).content == call.response
    dialogue = load_dialogues([{
        "id": "numbers", "tools": [{"type": "function", "function": {"name": "SetVolume", "parameters": {
            "type": "object", "properties": {"level": {"type": "integer"}}, "required": ["level"]}}}],
        "messages": [{"role": "user", "content": "volume 7"},
                     {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function",
                      "function": {"name": "SetVolume", "arguments": {"level": 7}}}]},
                     {"role": "tool", "tool_call_id": "c1", "name": "SetVolume", "content": "{}"},
                     {"role": "assistant", "content": "Done."}]}])[0]
    lenient = make_simulator("replay", lenient=True).start_episode(dialogue)
    assert run(lenient.execute("SetVolume", {"level": "7"}, turn=0)).source == "replay"
    assert run(lenient.execute("SetVolume", {"level": 7.0}, turn=0)).source == "replay"
    strict = make_simulator("replay").start_episode(dialogue)
    assert run(strict.execute("SetVolume", {"level": "7"}, turn=0)).source == "schema_error"


@pytest.mark.parametrize("arguments, expected_words", [
    ({"username": "a", "password": "b"}, ["missing required argument", "email"]),
    ({"username": "a", "password": "b", "email": "c", "favourite_colour": "red"}, ["unknown argument", "favourite_colour"]),
    ({"username": 7, "password": "b", "email": "c"}, ["'username'", "not of type 'string'"]),
    ("{not json", ["must be a JSON object"]),
])
def test_invalid_arguments_get_a_schema_error_that_says_what_is_wrong(arguments, expected_words):
    result = run(make_simulator("replay").start_episode(FIRST).execute("RegisterUser", arguments, turn=0))
    assert result.source == "schema_error"
    message = json.loads(result.content)["error"]
    assert all(word in message for word in expected_words), message


def test_a_value_outside_an_enum_is_a_schema_error():
    arguments = {"name": "x", "event_type": "party", "start_time": "2023-09-12 09:00:00",
                 "end_time": "2023-09-12 10:00:00"}
    result = run(make_simulator("replay").start_episode(FIRST).execute("CreateEvent", arguments, turn=0))
    assert result.source == "schema_error" and "event_type" in result.content


def test_an_unknown_tool_gets_an_error_listing_the_available_tools():
    result = run(make_simulator("replay").start_episode(FIRST).execute("LaunchRocket", {}, turn=0))
    assert result.source == "unknown_tool"
    assert "RegisterUser" in json.loads(result.content)["error"]


def test_a_valid_unrecorded_call_without_an_llm_gets_the_deterministic_no_simulator_error():
    arguments = {"start_time": "2030-01-01 00:00:00", "end_time": "2030-01-01 23:59:59"}
    first = run(make_simulator("replay").start_episode(FIRST).execute("QueryCalendar", arguments, turn=0))
    second = run(make_simulator("replay").start_episode(FIRST).execute("QueryCalendar", arguments, turn=3))
    assert first == second and first.source == "no_simulator"
    assert "no recorded response" in first.content and "no tool simulator is configured" in first.content


def _simulated_answer(request):
    return json.dumps({"analysis": "no events that day", "execution_result": {"response": [], "exception": None}})


def test_a_valid_unrecorded_call_goes_to_the_llm_and_the_same_call_gets_the_cached_answer():
    arguments = {"start_time": "2030-01-01 00:00:00", "end_time": "2030-01-01 23:59:59"}
    with ScriptedServer(_simulated_answer) as server:
        episode = make_simulator(server.spec, llm_options={"max_retries": 0}).start_episode(FIRST)

        async def twice():
            return await asyncio.gather(*(episode.execute("QueryCalendar", arguments, turn=1) for _ in range(3)))

        results = run(twice())
        assert len(server.requests) == 1
    assert {r.source for r in results} == {"llm"}
    assert json.loads(results[0].content) == {"response": [], "exception": None}
    assert episode.usage()["llm"] == 3 and episode.usage()["cache_hits"] == 2 and episode.usage()["llm_calls"] == 1


def test_perturbed_calls_go_to_replay_schema_validation_or_the_llm_as_expected():
    call = _first_call()
    with ScriptedServer(_simulated_answer) as server:
        episode = make_simulator(server.spec, llm_options={"max_retries": 0}).start_episode(FIRST)
        changed = {**call.arguments, "username": call.arguments["username"] + "x"}
        missing = {k: v for k, v in call.arguments.items() if k != "email"}
        sources = [run(episode.execute(call.name, a, turn=call.turn)).source
                   for a in (call.arguments, changed, missing)]
        assert sources == ["replay", "llm", "schema_error"]
        assert len(server.requests) == 1


def test_an_unparsable_llm_answer_is_a_failed_result_after_the_attempts():
    with ScriptedServer(lambda request: "I cannot do that") as server:
        simulator = make_simulator(server.spec, attempts=2, llm_options={"max_retries": 0})
        result = run(simulator.start_episode(FIRST).execute(
            "QueryCalendar", {"start_time": "2030-01-01 00:00:00", "end_time": "2030-01-02 00:00:00"}, turn=0))
        assert result.source == "failed"
        assert len(server.requests) == 2


def test_the_fewshot_prefix_holds_only_recordings_before_the_agents_position_unless_all_is_asked():
    calls = recorded_calls(FIRST)
    early = min(c.turn for c in calls)
    future = [c for c in calls if c.turn > early]
    assert future, "the dialogue needs calls after its first call's turn"
    arguments = {"start_time": "2030-01-01 00:00:00", "end_time": "2030-01-01 23:59:59"}
    prefix = HybridToolSimulator(fewshot="prefix").start_episode(FIRST)
    everything = HybridToolSimulator(fewshot="all").start_episode(FIRST).prompt("QueryCalendar", arguments, early)
    shown = prefix.prompt("QueryCalendar", arguments, early)[1]["content"]
    for call in calls:
        assert call.response in everything[1]["content"]
        # before the agent replays anything of turn `early`, neither that turn's nor later recordings are shown
        assert (call.response in shown) == (call.turn < early)
    first = calls[0]
    assert run(prefix.execute(first.name, first.arguments, turn=first.turn)).source == "replay"
    shown = prefix.prompt("QueryCalendar", arguments, early)[1]["content"]
    assert first.response in shown
    assert all(c.response not in shown for c in future)
    last_turn = max(c.turn for c in calls)
    latest = HybridToolSimulator().start_episode(FIRST).prompt("QueryCalendar", arguments, last_turn)
    assert all(c.response in latest[1]["content"] for c in calls if c.turn < last_turn)


def test_the_simulator_prompt_states_the_output_contract_and_the_tool_schema():
    messages = HybridToolSimulator().start_episode(FIRST).prompt("QueryCalendar", {"start_time": "a"}, 0)
    assert "execution_result" in messages[0]["content"] and "analysis" in messages[0]["content"]
    assert '"start_time"' in messages[1]["content"] and "QueryCalendar" in messages[1]["content"]
