"""Stable-Baselines3 wrappers: discrete candidate actions and hashed-feature observations over CM2ToolUse-v0."""

from __future__ import annotations

import json
import zlib

import gymnasium as gym
import numpy as np
import pytest

import cm2_env  # noqa: F401 - registers CM2ToolUse-v0
from cm2_env.data import dialogue_turns, load_dialogues
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


def test_reference_candidates_are_stationary_and_ordered_by_their_text_not_by_correctness():
    dialogues = load_dialogues("tooltalk")
    propose = ReferenceCandidates(dialogues)
    positions = [{"dialogue_id": d.id, "turn": t, "action": a} for d in dialogues[:12] for t in range(3) for a in range(2)]
    right_slots = []
    for info in positions:
        first = propose(info, 4, np.random.default_rng(0))
        assert first == propose(info, 4, np.random.default_rng(99))  # no dependence on the generator
        offered = [c for c in first if c is not None]
        assert offered == sorted(offered, key=lambda c: (zlib.crc32(c.encode()), c))  # ordered by a hash of the text
        assert first[len(offered):] == [None] * (4 - len(offered))  # empty slots last
        right = propose(info, 1)[0]
        assert offered.count(right) == 1
        right_slots.append(offered.index(right))
    assert len(set(right_slots)) > 1  # the right answer is not always in the same slot


def test_the_distractors_are_chosen_per_position():
    """Two positions of a dialogue with many actions offer different distractors: they are a hash of the position,
    not one fixed set per dialogue."""
    dialogues = load_dialogues("tooltalk")
    propose = ReferenceCandidates(dialogues)
    rich = next(d for d in dialogues if sum(len(t.actions) for t in dialogue_turns(d)) >= 8)
    sets = []
    for t, turn in enumerate(dialogue_turns(rich)):
        for a in range(len(turn.actions)):
            info = {"dialogue_id": rich.id, "turn": t, "action": a}
            right = propose(info, 1)[0]
            sets.append(frozenset(c for c in propose(info, 3) if c not in (None, right)))
    # one fixed ranking per dialogue could give at most 3 pairs (its top two, minus the right answer); 14 of 16 here
    assert len(set(sets)) > 3


def test_empty_slots_are_masked_and_the_mask_reaches_maskable_ppo_through_the_wrappers():
    pytest.importorskip("sb3_contrib", reason="the sb3 extra (pip install -e .[sb3]) installs sb3-contrib")
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.utils import get_action_masks
    from stable_baselines3.common.env_util import make_vec_env

    short = next(d for d in load_dialogues("tooltalk") if len({json.dumps(a.assistant.model_dump(mode="json"))
                                                                for t in dialogue_turns(d) for a in t.actions}) < 4)
    env = HashedFeatures(CandidateActions(gym.make("CM2ToolUse-v0", dataset=[short]), num_candidates=6), dim=16,
                         features="turn")
    _, info = env.reset(seed=0)
    mask = env.get_wrapper_attr("action_masks")()
    assert mask.tolist() == info["candidate_mask"] and not mask.all() and mask.any()
    assert all(c == "" for c, valid in zip(info["candidates"], mask) if not valid)
    vec = make_vec_env(lambda: env, n_envs=1)
    assert get_action_masks(vec)[0].tolist() == mask.tolist()
    model = MaskablePPO("MlpPolicy", vec, n_steps=32, batch_size=16, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=64)
    observation = vec.reset()
    for _ in range(20):  # a masked policy never picks an empty slot
        masks = get_action_masks(vec)
        action, _ = model.predict(observation, action_masks=masks, deterministic=False)
        assert masks[0][int(action[0])]
        observation, _, _, _ = vec.step(action)


def test_turn_features_hash_only_the_current_turns_messages():
    from cm2_env.wrappers import turn_text

    env = HashedFeatures(CandidateActions(gym.make("CM2ToolUse-v0"), num_candidates=2), dim=64, features="turn")
    observation, info = env.reset(seed=0, options={"dialogue_id": DIALOGUE})
    last_user = max(i for i, m in enumerate(info["messages"]) if m["role"] == "user")
    assert np.array_equal(observation[:64], hashed_features(turn_text(info["messages"][last_user:]), 64))
    system = info["messages"][0]
    assert system["role"] == "system" and system["content"] not in turn_text(info["messages"])
    with pytest.raises(ValueError, match="features"):
        HashedFeatures(gym.make("CM2ToolUse-v0"), features="everything")


@pytest.mark.slow
def test_ppo_learns_the_right_action_per_position_from_the_checklist_reward():
    """The SB3 set-up of docs/environment.md: 8 dialogues, step-paid reward, K=4 stationary candidates, turn
    features. Seeded PPO on CPU with one thread is deterministic; the margin covers other CPUs' kernels."""
    import torch

    from benchmarks.sb3_learning import make_env, random_reward, train_curve

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        random = float(np.mean([random_reward(make_env(8), seed) for seed in range(3)]))
        curve, _ = train_curve("ppo", lambda: make_env(8), steps=8192, eval_every=8192, seed=0)
    finally:
        torch.set_num_threads(threads)
    assert curve[-1][1] >= random + 0.4, (random, curve)
