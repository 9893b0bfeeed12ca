"""CM2ToolUse-v0: Gymnasium conformance, the flow of an episode, reward assignment, limits, invalid calls,
failures and rendering.

The judges defined here are test doubles for an external LLM judge (scripted verdicts, a judge that errors);
the simulator is the real replay simulator except where a failing LLM-backed simulator is stood in for.
"""

from __future__ import annotations

import asyncio
import json
import string
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import cm2_env  # noqa: F401 - registers CM2ToolUse-v0
from cm2_env.data import dialogue_turns, load_dialogues
from cm2_env.env import CM2ToolUseEnv
from cm2_env.judge.base import Verdict
from tests.support.reward_oracle import payouts
from cm2_env.simulator.base import ToolResult
from cm2_env.spaces import TextSpace
from cm2_env.toolcalls import render_hermes, render_message_hermes

DIALOGUE = "tooltalk/Calendar-Reminder-Weather-CompleteReminder-1"  # 3 turns, 2/2/3 actions, dependencies


@pytest.fixture(scope="module")
def dialogues():
    return load_dialogues("tooltalk")


@pytest.fixture(scope="module")
def dialogue(dialogues):
    return next(d for d in dialogues if d.id == DIALOGUE)


def reference_texts(dialogue) -> list[list[str]]:
    """The reference actions of every turn, as Hermes text."""
    return [[render_message_hermes(a.assistant) for a in turn.actions] for turn in dialogue_turns(dialogue)]


class ScriptedJudge:
    """Stands in for an LLM judge: item ids passed after (turn, action) are scripted; records every request."""

    def __init__(self, script: dict[tuple[int, int], set[str]] | None = None, default: bool = False):
        self.script = script or {}
        self.default = default
        self.requests: list[tuple[int, int, list[str]]] = []

    async def judge(self, request):
        ids = [item.id for item in request.items]
        self.requests.append((request.turn, request.action, ids))
        passed = self.script.get((request.turn, request.action), set())
        return {i: Verdict(i, self.default or i in passed, "llm") for i in ids}

    def usage(self):
        return {"requests": len(self.requests)}


class RaisingJudge:
    """An LLM judge whose endpoint is down."""

    async def judge(self, request):
        raise ConnectionError("judge endpoint unreachable")

    def usage(self):
        return {}


class UndecidedJudge:
    """An LLM judge that could not get a usable answer after its retries."""

    async def judge(self, request):
        return {item.id: Verdict(item.id, None, "llm", error="no JSON answer after 2 attempts") for item in request.items}

    def usage(self):
        return {}


class FailingSimulator:
    """An LLM-backed tool simulator whose LLM fails on every call."""

    class Episode:
        async def execute(self, name, arguments, *, turn):
            return ToolResult('{"error": "simulator LLM failed"}', "failed", "llm_error")

        def usage(self):
            return {"failed": 1}

    def start_episode(self, dialogue):
        return self.Episode()


# The fixed trajectory's verdicts: turn 0's C2 becomes satisfied in the same action as its dependency C1, so it
# never pays (Eq. 2); every other item pays once.
FIXED_SCRIPT = {
    (0, 1): {"C0", "C1", "C2"}, (0, 2): {"C3"},
    (1, 1): {"C0", "C1"}, (1, 2): {"C2", "C3"},
    (2, 1): {"C0"}, (2, 2): {"C1", "C2"}, (2, 3): {"C3"},
}


def play(env, texts_per_turn, *, dialogue_id=DIALOGUE):
    """Reset on ``dialogue_id`` and play the given actions turn by turn; returns (rewards, last step result)."""
    env.reset(seed=0, options={"dialogue_id": dialogue_id})
    rewards, result = [], None
    for texts in texts_per_turn:
        for text in texts:
            result = env.step(text)
            rewards.append(result[1])
            if result[2] or result[3]:
                return rewards, result
    return rewards, result


# --- Gymnasium conformance ------------------------------------------------------------------------------


def test_check_env_passes_on_the_registered_default_env_without_warnings():
    env = gym.make("CM2ToolUse-v0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    problems = [str(w.message) for w in caught if not issubclass(w.category, ResourceWarning)]
    assert problems == []
    env.close()


def test_the_default_env_uses_bundled_tooltalk_replay_and_the_rule_judge():
    env = gym.make("CM2ToolUse-v0").unwrapped
    assert len(env.dialogues) == 78
    assert type(env.judge).__name__ == "RuleJudge"
    assert type(env.simulator).__name__ == "HybridToolSimulator"
    env.close()


def test_random_text_actions_for_1000_steps_never_raise_and_each_episode_pays_R(dialogues):
    env = gym.make("CM2ToolUse-v0")
    env.action_space.seed(0)
    rng = np.random.default_rng(0)
    fragments = ["<tool_call>", "</tool_call>", "<think>", "</think>", '{"name": ', '"arguments": ', "{", "}", "[",
                 '"GetReminders"', "null", "\u00e9\u4e2d\ud83d\ude00"]
    obs, info = env.reset(seed=0)
    episode_return, episodes = 0.0, 0
    for step in range(1000):
        kind = step % 4
        if kind == 0:
            action = env.action_space.sample()
        elif kind == 1:  # tool-call-shaped noise
            action = "".join(rng.choice(fragments, size=int(rng.integers(1, 8))))
        elif kind == 2:  # a well-formed call to one of the dialogue's tools with junk arguments
            tool = info["tools"][int(rng.integers(len(info["tools"])))]["function"]["name"] if info["tools"] else "X"
            action = render_hermes([{"name": tool, "arguments": {"q": env.action_space.sample()[:20]}}])
        else:
            action = "<think>" + env.action_space.sample()[:50] + "</think>" + env.action_space.sample()[:50]
        obs, reward, terminated, truncated, info = env.step(action)
        assert env.observation_space.contains(obs)
        assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
        assert info["failed"] is False
        episode_return += reward
        if terminated or truncated:
            assert episode_return == pytest.approx(info["R"], abs=1e-12)
            episodes += 1
            episode_return = 0.0
            obs, info = env.reset()
    assert episodes > 10
    env.close()


def test_text_space_accepts_any_string_within_its_length_and_samples_reproducibly():
    space = TextSpace(10, seed=3)
    assert space.contains("\u4e2d\ud83d\ude00\x00") and space.contains("") and not space.contains("x" * 11)
    assert not space.contains(b"bytes") and not space.contains(None)
    first = [space.sample() for _ in range(5)]
    space.seed(3)
    assert [space.sample() for _ in range(5)] == first
    assert all(space.contains(s) and set(s) <= set(string.printable) for s in first)
    assert len(space.sample(mask=7)) == 7


# --- reset ------------------------------------------------------------------------------------------------


def test_reset_with_the_same_seed_picks_the_same_dialogue_and_seeds_spread_over_the_dataset():
    env = CM2ToolUseEnv()
    ids = [env.reset(seed=s)[1]["dialogue_id"] for s in range(20)]
    assert ids == [env.reset(seed=s)[1]["dialogue_id"] for s in range(20)]
    assert len(set(ids)) > 5
    env.reset(seed=7)
    follow_up = [env.reset()[1]["dialogue_id"] for _ in range(3)]
    env.reset(seed=7)
    assert [env.reset()[1]["dialogue_id"] for _ in range(3)] == follow_up


def test_reset_option_dialogue_id_starts_that_dialogue_with_system_prompt_and_first_user_message(dialogue):
    env = CM2ToolUseEnv()
    obs, info = env.reset(options={"dialogue_id": DIALOGUE})
    assert info["dialogue_id"] == DIALOGUE and info["turn"] == 0 and info["action"] == 0
    assert [m["role"] for m in info["messages"]] == ["system", "user"]
    assert info["messages"][1]["content"] == dialogue_turns(dialogue)[0].user.content
    assert json.loads(obs) == info["messages"]
    assert [t["function"]["name"] for t in info["tools"]] == dialogue.tool_names
    assert info["reference_turns"] == 3 and info["failed"] is False and info["failure"] is None
    assert set(info["verdicts"][0]) == {"C0", "C1", "C2", "C3"}


def test_reset_with_an_unknown_dialogue_id_says_which_ids_are_close():
    env = CM2ToolUseEnv()
    with pytest.raises(ValueError, match="did you mean"):
        env.reset(options={"dialogue_id": DIALOGUE + "x"})


# --- one fixed trajectory -------------------------------------------------------------------------------


@pytest.mark.parametrize("L", ["reference", "reached"])
def test_one_fixed_trajectory_pays_R_in_total_under_every_assignment_mode(dialogue, L):
    texts = reference_texts(dialogue)
    returns, per_mode = {}, {}
    for mode in ("step", "turn", "trajectory"):
        env = CM2ToolUseEnv([dialogue], judge=ScriptedJudge(FIXED_SCRIPT), reward_assignment=mode, normaliser=L)
        rewards, (_, _, terminated, truncated, info) = play(env, texts)
        assert terminated and not truncated and info["end_reason"] == "dialogue_complete"
        returns[mode], per_mode[mode] = sum(rewards), rewards
        assert returns[mode] == pytest.approx(info["R"], abs=1e-12)
    # Turn rewards 0.6, 1.0, 1.0 (turn 0's C2 does not pay: satisfied together with its dependency C1).
    assert returns["step"] == returns["turn"] == returns["trajectory"] == pytest.approx(2.6 / 3)
    record = info["reward_record"]
    assert record["turn_rewards"] == pytest.approx([0.6, 1.0, 1.0])
    assert record["turns"][0]["steps"] == 2 and len(record["turns"][0]["checklists"]) == 1
    first_turn = record["turns"][0]["checklists"][0]
    assert first_turn["first_satisfied"] == {"C0": 1, "C1": 1, "C2": 1, "C3": 2}
    assert first_turn["paid"] == {"C0": 1, "C1": 1, "C3": 2}  # C2 came with its dependency C1: never paid
    assert [item["id"] for item in first_turn["items"]] == ["C0", "C1", "C2", "C3"]
    assert [t["steps"] for t in record["turns"]] == [2, 2, 3] and record["failed"] is False
    assert per_mode["trajectory"][:-1] == [0.0] * 6
    if L == "reached":  # L is known only at the end: earlier payments use the turns reached so far
        return
    # When each mode pays agrees with the literal payout schedule (the test oracle).
    for mode in ("step", "turn", "trajectory"):
        expected = [r for turn in payouts(record["action_rewards"], 3, mode) for r in turn]
        assert per_mode[mode] == pytest.approx(expected, abs=1e-12)


def test_a_reward_assignment_object_is_composed_into_the_env_and_the_total_stays_R(dialogue):
    from cm2_env.reward import RewardAssignment, StepAssignment

    class HalfNow(RewardAssignment):
        name = "half-now"

        def interim(self, action_reward, turn_reward, turn_ended, divisor):
            return action_reward / divisor / 2

    texts = reference_texts(dialogue)
    step_rewards, _ = play(CM2ToolUseEnv([dialogue], judge=ScriptedJudge(FIXED_SCRIPT), reward_assignment=StepAssignment()),
                           texts)
    rewards, (_, _, terminated, _, info) = play(
        CM2ToolUseEnv([dialogue], judge=ScriptedJudge(FIXED_SCRIPT), reward_assignment=HalfNow()), texts)
    assert terminated and sum(rewards) == pytest.approx(info["R"]) == pytest.approx(sum(step_rewards))
    assert rewards[:-1] == pytest.approx([r / 2 for r in step_rewards[:-1]])
    with pytest.raises(ValueError, match="reward_assignment must be one of"):
        CM2ToolUseEnv([dialogue], reward_assignment="episode")


def test_the_judge_is_asked_only_about_items_not_yet_satisfied(dialogue):
    judge = ScriptedJudge(FIXED_SCRIPT)
    play(CM2ToolUseEnv([dialogue], judge=judge), reference_texts(dialogue))
    assert judge.requests[0] == (0, 1, ["C0", "C1", "C2", "C3"])
    assert judge.requests[1] == (0, 2, ["C3"])
    assert judge.requests[2] == (1, 1, ["C0", "C1", "C2", "C3"])


def test_replayed_reference_calls_get_the_recorded_tool_responses(dialogue):
    env = CM2ToolUseEnv([dialogue], judge=ScriptedJudge(default=True))
    env.reset()
    _, _, _, _, info = env.step(reference_texts(dialogue)[0][0])
    assistant, tool = info["messages"][-2:]
    assert assistant["tool_calls"][0]["function"]["name"] == "GetReminders"
    assert tool["role"] == "tool" and tool["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert tool["content"] == dialogue_turns(dialogue)[0].actions[0].tool_responses[0].content
    assert info["usage"]["simulator"]["replay"] == 1 and info["action"] == 1


def test_same_seed_and_actions_give_identical_steps_with_deterministic_backends(dialogue):
    texts = reference_texts(dialogue)
    runs = []
    for _ in range(2):
        env = CM2ToolUseEnv()
        env.reset(seed=1, options={"dialogue_id": DIALOGUE})
        runs.append([env.step(t) for turn in texts for t in turn[:1]][:2])
    assert runs[0] == runs[1]


# --- turn ends, strictness and limits ------------------------------------------------------------------


def test_a_final_reply_missing_a_required_item_ends_the_episode_when_strict(dialogue):
    script = {**FIXED_SCRIPT, (0, 1): {"C0", "C1"}}  # C2 (required) never satisfied in turn 0
    env = CM2ToolUseEnv([dialogue], judge=ScriptedJudge(script))
    rewards, (_, _, terminated, truncated, info) = play(env, reference_texts(dialogue))
    assert terminated and not truncated and info["end_reason"] == "strictness" and len(rewards) == 2
    assert info["verdicts"][0]["C2"] == {"passed": False, "first_action": None, "source": "llm"}
    assert sum(rewards) == pytest.approx(info["R"]) == pytest.approx(0.6 / 3)


def test_without_strictness_the_next_reference_user_message_follows_verbatim(dialogue):
    env = CM2ToolUseEnv([dialogue], judge=ScriptedJudge(), strict=False)
    env.reset()
    texts = reference_texts(dialogue)
    env.step(texts[0][0])
    _, _, terminated, truncated, info = env.step(texts[0][1])
    assert not terminated and not truncated and info["turn"] == 1 and info["action"] == 0
    assert info["messages"][-1] == {"role": "user", "content": dialogue_turns(dialogue)[1].user.content}


def test_the_action_limit_of_a_turn_truncates_the_episode(dialogue):
    env = CM2ToolUseEnv([dialogue], judge=ScriptedJudge(), max_actions_per_turn=2)
    env.reset()
    call = reference_texts(dialogue)[0][0]
    assert env.step(call)[3] is False
    _, reward, terminated, truncated, info = env.step(call)
    assert truncated and not terminated and info["end_reason"] == "max_actions_per_turn"
    [turn] = info["reward_record"]["turns"]
    assert turn["steps"] == 2 and turn["checklists"][0]["first_satisfied"] == {f"C{i}": None for i in range(4)}


def test_the_turn_limit_truncates_after_the_last_allowed_turn(dialogue):
    env = CM2ToolUseEnv([dialogue], judge=ScriptedJudge(FIXED_SCRIPT), max_turns=1)
    rewards, (_, _, terminated, truncated, info) = play(env, reference_texts(dialogue))
    assert truncated and not terminated and info["end_reason"] == "max_turns" and len(rewards) == 2
    assert sum(rewards) == pytest.approx(0.6 / 3)  # L counts the reference turns by default


def test_an_overlong_history_truncates_and_the_observation_still_fits(dialogue):
    first, _ = CM2ToolUseEnv([dialogue]).reset()
    limit = len(first) + 300  # room for the call, not for the call and its tool response
    env = CM2ToolUseEnv([dialogue], judge=ScriptedJudge(default=True), max_observation_length=limit)
    obs, _ = env.reset()
    obs, reward, terminated, truncated, info = env.step(reference_texts(dialogue)[0][0])
    assert truncated and not terminated and info["end_reason"] == "observation_length"
    assert len(obs) <= limit and json.loads(obs)[0]["role"] == "system" and json.loads(obs)[-1]["role"] == "tool"
    assert reward == pytest.approx(info["R"]) == pytest.approx(0.5 / 3)


def test_an_overlong_action_is_cut_to_the_action_space_limit(dialogue):
    env = CM2ToolUseEnv([dialogue], judge=ScriptedJudge(), max_action_length=50, strict=False)
    env.reset()
    _, _, _, _, info = env.step("y" * 80)
    assert info["action_clipped"] is True and info["messages"][-2]["content"] == "y" * 50


# --- invalid calls -------------------------------------------------------------------------------------

INVALID_ACTIONS = {
    "malformed": '<tool_call>{"name": "GetReminders", </tool_call>',
    "unknown tool": '<tool_call>{"name": "LaunchRocket", "arguments": {}}</tool_call>',
    "schema error": '<tool_call>{"name": "AddReminder", "arguments": {"taks": "buy milk"}}</tool_call>',
}


@pytest.mark.parametrize("kind", sorted(INVALID_ACTIONS))
def test_an_invalid_call_gets_an_error_tool_message_and_the_episode_continues(dialogue, kind):
    judge = ScriptedJudge()
    env = CM2ToolUseEnv([dialogue], judge=judge)
    env.reset()
    _, reward, terminated, truncated, info = env.step(INVALID_ACTIONS[kind])
    assert not terminated and not truncated and reward == 0.0
    tool = info["messages"][-1]
    assert tool["role"] == "tool" and "error" in json.loads(tool["content"])
    assert info["usage"]["invalid_calls"] == 1 and len(judge.requests) == 1
    _, _, _, _, info = env.step(reference_texts(dialogue)[0][0])  # the agent can still recover
    assert info["action"] == 2 and info["messages"][-1]["content"].startswith('{"response"')


@pytest.mark.parametrize("kind", sorted(INVALID_ACTIONS))
def test_an_invalid_call_ends_the_episode_unjudged_under_the_terminate_policy(dialogue, kind):
    judge = ScriptedJudge(default=True)
    env = CM2ToolUseEnv([dialogue], judge=judge, invalid_call_policy="terminate")
    env.reset()
    _, reward, terminated, truncated, info = env.step(INVALID_ACTIONS[kind])
    assert terminated and not truncated and info["end_reason"] == "invalid_call" and not info["failed"]
    assert judge.requests == [] and reward == 0.0 and info["reward_record"]["turns"][0]["steps"] == 1


def test_a_malformed_action_runs_none_of_its_calls(dialogue):
    env = CM2ToolUseEnv([dialogue], judge=ScriptedJudge())
    env.reset()
    good = reference_texts(dialogue)[0][0]
    _, _, _, _, info = env.step(good + "\n<tool_call>not json</tool_call>")
    assert info["usage"]["tool_calls"] == 0 and "tool_calls" not in info["messages"][-2]
    assert json.loads(info["messages"][-1]["content"])["kind"] == "invalid_json"


# --- failures --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("judge", [RaisingJudge(), UndecidedJudge()], ids=["raises", "undecided"])
def test_a_judge_failure_marks_the_episode_failed_and_ends_it(dialogue, judge):
    env = CM2ToolUseEnv([dialogue], judge=judge)
    env.reset()
    _, reward, terminated, truncated, info = env.step(reference_texts(dialogue)[0][0])
    assert truncated and not terminated and info["failed"] is True and info["end_reason"] == "failed"
    assert "judge" in info["failure"] and info["reward_record"]["failed"] is True and reward == 0.0
    with pytest.raises(RuntimeError, match="reset"):
        env.step("hello")


class RaisingSimulator(FailingSimulator):
    """A simulator backend with a bug: execute raises."""

    class Episode(FailingSimulator.Episode):
        async def execute(self, name, arguments, *, turn):
            raise KeyError("boom")

    def start_episode(self, dialogue):
        return self.Episode()


@pytest.mark.parametrize("simulator, message", [(FailingSimulator(), "simulator failed on GetReminders"),
                                                (RaisingSimulator(), "simulator raised KeyError on GetReminders")],
                         ids=["failed result", "raises"])
def test_a_simulator_failure_marks_the_episode_failed_and_skips_the_judge(dialogue, simulator, message):
    judge = ScriptedJudge(default=True)
    env = CM2ToolUseEnv([dialogue], simulator=simulator, judge=judge)
    env.reset()
    _, _, terminated, truncated, info = env.step(reference_texts(dialogue)[0][0])
    assert truncated and not terminated and info["failed"] and message in info["failure"]
    assert judge.requests == [] and info["messages"][-1]["role"] == "tool"


# --- async API, variants, render ----------------------------------------------------------------------


def test_async_api_runs_inside_an_event_loop_and_the_sync_api_there_says_what_to_use(dialogue):
    env = CM2ToolUseEnv([dialogue], judge=ScriptedJudge(FIXED_SCRIPT))

    async def episode():
        await env.areset(seed=0)
        with pytest.raises(RuntimeError, match="astep"):
            env.step("hello")
        total = 0.0
        for texts in reference_texts(dialogue):
            for text in texts:
                _, reward, terminated, _, info = await env.astep(text)
                total += reward
        return total, terminated, info

    total, terminated, info = asyncio.run(episode())
    assert terminated and total == pytest.approx(info["R"]) == pytest.approx(2.6 / 3)


@pytest.mark.parametrize("how", ["mean", "majority"])
def test_checklist_variants_are_judged_separately_and_aggregated(dialogue, how):
    record = dialogue.to_record()
    record["checklists"] = [record["checklists"][0], record["checklists"][0]]
    env = CM2ToolUseEnv([record], judge=ScriptedJudge(FIXED_SCRIPT), checklist_variants=how)
    rewards, (_, _, terminated, _, info) = play(env, reference_texts(dialogue))
    assert terminated and set(info["verdicts"][0]) == {f"v{k}.C{i}" for k in range(2) for i in range(4)}
    assert sum(rewards) == pytest.approx(info["R"]) == pytest.approx(2.6 / 3)  # identical variants
    assert len(info["reward_record"]["turns"][0]["checklists"]) == 2


def test_ansi_render_shows_the_transcript_with_verdicts(dialogue):
    env = CM2ToolUseEnv([dialogue], judge=ScriptedJudge({(0, 1): {"C0", "C1"}}), render_mode="ansi")
    env.reset()
    env.step(reference_texts(dialogue)[0][0])
    text = env.render()
    assert "[user] Check my reminders." in text and "call GetReminders({})" in text
    assert "✓ C0 (llm" in text and "✗ C2 [required]" in text and "running" in text
    with pytest.warns(UserWarning, match="render_mode"):
        assert CM2ToolUseEnv([dialogue]).render() is None


# --- the observation and verdict snapshots of long episodes (incremental, issue 17) --------------------


def reference_observation(messages, n_system, limit):
    """The observation contract written out plainly: every message's JSON joined by "," in a JSON array; when
    longer than ``limit``, the system messages plus the most recent messages that fit; cut hard if even that
    fails."""
    parts = [json.dumps(m, ensure_ascii=False) for m in messages]
    whole = "[" + ",".join(parts) + "]"
    if len(whole) <= limit:
        return whole
    head = parts[:n_system]
    size = 2 + sum(len(p) + 1 for p in head)
    tail = []
    for part in reversed(parts[n_system:]):
        if size + len(part) + 1 > limit:
            break
        tail.append(part)
        size += len(part) + 1
    text = "[" + ",".join(head + tail[::-1]) + "]"
    return text if len(text) <= limit else text[:limit]


def repeated_turns(dialogue, n_turns):
    """A dialogue of ``n_turns`` turns: the reference dialogue's turns over and over (with their items)."""
    record = dialogue.to_record()
    turns = dialogue_turns(dialogue)
    system = record["messages"][: turns[0].start]
    spans = [record["messages"][t.start: t.start + len(t.messages)] for t in turns]
    items = record["checklists"][0]
    record["messages"] = system + [m for t in range(n_turns) for m in spans[t % len(spans)]]
    record["checklists"] = [[items[t % len(spans)] for t in range(n_turns)]]
    record["id"] = f"{dialogue.id}-x{n_turns}"
    return record


def test_after_every_step_of_a_long_episode_the_observation_is_the_json_array_of_the_visible_history(dialogue):
    record = repeated_turns(dialogue, 12)
    record["messages"][1]["content"] += " — naïve ☕ \u2028 \"quoted\""  # non-ASCII, kept as is (ensure_ascii off)
    env = CM2ToolUseEnv([record], judge=ScriptedJudge(FIXED_SCRIPT), strict=False, max_actions=1000,
                        max_actions_per_turn=1000, max_turns=1000)
    obs, info = env.reset(options={"dialogue_id": record["id"]})
    texts = [text for texts in reference_texts(CM2ToolUseEnv([record]).dialogues[0]) for text in texts]
    snapshots = []
    for text in texts:
        assert obs == reference_observation(info["messages"], 1, 10 ** 9)
        assert json.loads(obs) == info["messages"]
        obs, _, terminated, truncated, info = env.step(text)
        episode = env.unwrapped._episode
        assert info["verdicts"] == [dict(turn.records) for turn in episode.turns]
        snapshots.append((info["verdicts"], json.loads(json.dumps(info["verdicts"]))))
        if len(snapshots) > 1:  # what a caller does to one step's snapshot cannot reach another's
            snapshots[-2][0][0].clear()
            snapshots[-2] = (snapshots[-2][0], json.loads(json.dumps(snapshots[-2][0])))
        if terminated or truncated:
            break
    assert terminated and info["turn"] == 11 and obs == reference_observation(info["messages"], 1, 10 ** 9)
    for handed_out, copy in snapshots:  # a snapshot handed out earlier never changes afterwards
        assert handed_out == copy


def test_a_cut_observation_keeps_the_system_prompt_and_the_most_recent_messages_that_fit(dialogue):
    record = repeated_turns(dialogue, 4)
    env = CM2ToolUseEnv([record], judge=ScriptedJudge(FIXED_SCRIPT), strict=False)
    env.reset(options={"dialogue_id": record["id"]})
    for text in [text for texts in reference_texts(dialogue) for text in texts][:5]:
        env.step(text)
    episode = env.unwrapped._episode
    messages = episode.messages
    whole = reference_observation(messages, 1, 10 ** 9)
    assert episode.observation_length == len(whole)
    for limit in [0, 1, 2, 5, 50, len(whole) // 3, len(whole) // 2, len(whole) - 1, len(whole), len(whole) + 7,
                  *range(len(json.dumps(messages[0], ensure_ascii=False)) - 2, len(whole), 97)]:
        assert episode.observation(limit) == reference_observation(messages, 1, limit), limit
