"""Stable-Baselines3 wrappers: discrete candidate actions and hashed-feature observations over CM2ToolUse-v0."""

from __future__ import annotations


import gymnasium as gym
import numpy as np
import pytest

import cm2_env  # noqa: F401 - registers CM2ToolUse-v0
from cm2_env.data import load_dialogues
from cm2_env.wrappers import CandidateActions, HashedFeatures, ReferenceCandidates, hashed_features

DIALOGUE = "tooltalk/Calendar-Reminder-Weather-CompleteReminder-1"


def test_hashed_features_are_deterministic_normalised_and_sensitive_to_the_text():
    a = hashed_features("GetReminders returned one reminder", 64)
    assert a.dtype == np.float32 and a.shape == (64,)
    assert np.array_equal(a, hashed_features("GetReminders returned one reminder", 64))
    assert np.linalg.norm(a) == pytest.approx(1.0)
    assert not np.array_equal(a, hashed_features("CurrentWeather in Juneau", 64))
    assert not hashed_features("", 8).any()


def test_reference_candidates_contain_the_reference_action_once_among_k():
    dialogues = load_dialogues("tooltalk")
    propose = ReferenceCandidates(dialogues)
    info = {"dialogue_id": DIALOGUE, "turn": 0, "action": 0}
    candidates = propose(info, 4, np.random.default_rng(0))
    assert len(candidates) == 4 and len(set(candidates)) == 4
    assert sum("GetReminders" in c for c in candidates) == 1


def test_always_choosing_the_reference_candidate_replays_the_dialogue():
    env = CandidateActions(gym.make("CM2ToolUse-v0"), num_candidates=3)
    propose = ReferenceCandidates(env.unwrapped.dialogues)
    _, info = env.reset(seed=0, options={"dialogue_id": DIALOGUE})
    done, total, steps = False, 0.0, 0
    while not done:
        right = propose({**info}, 1, np.random.default_rng(0))[0]  # K=1: only the reference action
        _, reward, terminated, truncated, info = env.step(info["candidates"].index(right))
        total, steps, done = total + reward, steps + 1, terminated or truncated
    assert info["end_reason"] in ("dialogue_complete", "strictness") and total == pytest.approx(info["R"])
    assert total > 0.0


def test_sb3_check_env_accepts_the_wrapped_env_and_ppo_runs_a_few_hundred_steps():
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_checker import check_env

    env = HashedFeatures(CandidateActions(gym.make("CM2ToolUse-v0"), num_candidates=4), dim=32)
    assert env.observation_space.shape == (5 * 32,)
    check_env(env, warn=True)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    observation, _ = env.reset(seed=1)
    action, _ = model.predict(observation, deterministic=True)
    assert env.action_space.contains(int(action))
    env.close()
