"""CM2VectorEnv: Gymnasium's vector API over concurrent CM2ToolUse-v0 episodes in one event loop."""

from __future__ import annotations

import asyncio

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import cm2_env  # noqa: F401 - registers CM2ToolUse-v0
from cm2_env.data import load_dialogues
from cm2_env.judge.base import Verdict
from cm2_env.vector import CM2VectorEnv

DIALOGUE = "tooltalk/Calendar-Reminder-Weather-CompleteReminder-1"
CALL = '<tool_call>{"name": "GetReminders", "arguments": {}}</tool_call>'
REPLY = "You have a reminder to buy Brody a birthday present."


class SlowJudge:
    """Stands in for an LLM judge with latency; counts how many requests are in flight at once."""

    def __init__(self, latency: float = 0.02):
        self.latency = latency
        self.in_flight = 0
        self.max_in_flight = 0

    async def judge(self, request):
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency)
        finally:
            self.in_flight -= 1
        return {item.id: Verdict(item.id, True, "llm") for item in request.items}

    def usage(self):
        return {}


@pytest.fixture(scope="module")
def dialogues():
    return load_dialogues("tooltalk")


def test_reset_and_step_are_batched_with_infos_as_arrays_and_masks(dialogues):
    envs = CM2VectorEnv(3, dataset=dialogues)
    observations, infos = envs.reset(seed=0)
    assert isinstance(observations, tuple) and len(observations) == 3
    assert observations in envs.observation_space
    assert infos["turn"].tolist() == [0, 0, 0] and infos["_turn"].all()
    assert infos["dialogue_id"].dtype == object and infos["usage"]["actions"].tolist() == [0, 0, 0]
    observations, rewards, terminations, truncations, infos = envs.step(["hi", CALL, REPLY])
    assert rewards.dtype == np.float64 and rewards.shape == (3,)
    assert terminations.dtype == np.bool_ and truncations.shape == (3,)
    assert infos["action"].tolist() in ([1, 1, 1], [1, 1, 0], [0, 1, 0], [0, 1, 1])
    envs.close()


def test_an_int_seed_seeds_sub_env_i_with_seed_plus_i(dialogues):
    envs = CM2VectorEnv(3, dataset=dialogues)
    _, infos = envs.reset(seed=10)
    single = gym.make("CM2ToolUse-v0").unwrapped
    expected = [single.reset(seed=10 + i)[1]["dialogue_id"] for i in range(3)]
    assert infos["dialogue_id"].tolist() == expected
    envs.close()


def test_dialogue_ids_option_picks_one_dialogue_per_sub_env(dialogues):
    envs = CM2VectorEnv(2, dataset=dialogues)
    ids = [dialogues[5].id, dialogues[9].id]
    _, infos = envs.reset(options={"dialogue_ids": ids})
    assert infos["dialogue_id"].tolist() == ids
    envs.close()


def test_sub_envs_step_concurrently_in_one_event_loop(dialogues):
    judge = SlowJudge()
    envs = CM2VectorEnv(8, dataset=dialogues, judge=judge)
    envs.reset(options={"dialogue_ids": [DIALOGUE] * 8})
    envs.step([CALL] * 8)
    assert judge.max_in_flight == 8
    envs.close()


def test_next_step_autoreset_restarts_an_ended_sub_env_on_the_following_step(dialogues):
    envs = CM2VectorEnv(2, dataset=dialogues, max_actions_per_turn=1)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    envs.reset(seed=0, options={"dialogue_ids": [DIALOGUE, DIALOGUE]})
    _, _, terminations, truncations, infos = envs.step([CALL, CALL])
    assert truncations.tolist() == [True, True] and infos["end_reason"].tolist() == ["max_actions_per_turn"] * 2
    observations, rewards, terminations, truncations, infos = envs.step(["ignored", "ignored"])
    assert rewards.tolist() == [0.0, 0.0] and not terminations.any() and not truncations.any()
    assert infos["action"].tolist() == [0, 0] and infos["usage"]["actions"].tolist() == [0, 0]
    envs.close()


def test_same_step_autoreset_returns_the_new_episode_and_the_final_info(dialogues):
    envs = CM2VectorEnv(2, dataset=dialogues, max_actions_per_turn=1, autoreset_mode="SameStep")
    envs.reset(seed=0, options={"dialogue_ids": [DIALOGUE, DIALOGUE]})
    _, rewards, _, truncations, infos = envs.step([CALL, CALL])
    assert truncations.all() and infos["_final_info"].all()
    final = infos["final_info"]
    assert final["end_reason"].tolist() == ["max_actions_per_turn"] * 2
    assert rewards.tolist() == pytest.approx(final["R"].tolist())
    assert infos["action"].tolist() == [0, 0]  # the observations and infos are the new episodes'
    envs.close()


def test_disabled_autoreset_requires_a_masked_reset_of_ended_sub_envs(dialogues):
    envs = CM2VectorEnv(2, dataset=dialogues, max_actions_per_turn=1, autoreset_mode=AutoresetMode.DISABLED)
    envs.reset(seed=0, options={"dialogue_ids": [DIALOGUE, DIALOGUE]})
    _, _, _, truncations, _ = envs.step([CALL, CALL])
    assert truncations.tolist() == [True, True]
    _, infos = envs.reset(options={"reset_mask": np.array([True, False])})
    assert infos["_turn"].tolist() == [True, False]
    with pytest.raises(RuntimeError, match=r"sub-envs \[1\].*reset_mask"):
        envs.step([CALL, CALL])
    envs.reset(options={"reset_mask": np.array([False, True])})
    _, _, _, truncations, _ = envs.step([CALL, CALL])
    assert truncations.tolist() == [True, True]
    envs.close()


def test_episode_returns_add_up_to_R_in_every_sub_env(dialogues):
    envs = CM2VectorEnv(4, dataset=dialogues, reward_assignment="step", autoreset_mode="SameStep")
    envs.action_space.seed(0)
    envs.reset(seed=3)
    returns = np.zeros(4)
    finished = 0
    for step in range(40):
        actions = [CALL if (step + i) % 3 else REPLY for i in range(4)]
        _, rewards, terminations, truncations, infos = envs.step(actions)
        returns += rewards
        for i in np.flatnonzero(terminations | truncations):
            assert returns[i] == pytest.approx(infos["final_info"]["R"][i])
            returns[i] = 0.0
            finished += 1
    assert finished > 4
    envs.close()


def test_make_vec_builds_the_vector_env_from_the_registration():
    envs = gym.make_vec("CM2ToolUse-v0", num_envs=2, vectorization_mode="vector_entry_point")
    assert isinstance(envs.unwrapped, CM2VectorEnv) and envs.num_envs == 2
    observations, _ = envs.reset(seed=0)
    assert len(observations) == 2
    envs.close()
