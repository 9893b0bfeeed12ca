"""Seeding: ``reset(seed=s)`` and the same actions give the same ``info`` in every process (the env's
``np_random`` and the wrappers' generators are seeded from ``reset(seed)`` alone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json
import gymnasium as gym
import cm2_env
from cm2_env.wrappers import CandidateActions, HashedFeatures

ACTIONS = [
    '<tool_call>\n{"name": "QueryCalendar", "arguments": {"start_time": "2023-09-12 00:00:00", '
    '"end_time": "2023-09-13 00:00:00"}}\n</tool_call>',
    '<tool_call>\n{"name": "NoSuchTool", "arguments": {}}\n</tool_call>',
    "Could you tell me more about what you need?",
    "Done.",
]
record = []
env = gym.make("CM2ToolUse-v0", reward_assignment="step")
for seed in (3, 4, 3):
    obs, info = env.reset(seed=seed)
    record.append([obs, info])
    for action in ACTIONS:
        obs, reward, terminated, truncated, info = env.step(action)
        record.append([obs, reward, terminated, truncated, info])
        if terminated or truncated:
            break
wrapped = HashedFeatures(CandidateActions(gym.make("CM2ToolUse-v0"), num_candidates=4), dim=16)
for seed in (5, 6):
    features, info = wrapped.reset(seed=seed)
    record.append([features.tolist(), info["candidates"]])
    for choice in (0, 1, 2):
        features, reward, terminated, truncated, info = wrapped.step(choice)
        record.append([features.tolist(), reward, terminated, truncated, info.get("candidates")])
        if terminated or truncated:
            break
print(json.dumps(record, sort_keys=True))
"""


def _run(hash_seed: str) -> list:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=REPO,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_same_seed_and_actions_give_identical_info_across_processes():
    first, second = _run("1"), _run("987")
    assert first == second
    infos = [entry[-1] for entry in first[:12] if isinstance(entry[-1], dict)]
    # the seed chooses the dialogue, and a repeated seed chooses it again
    reset_ids = [entry[1]["dialogue_id"] for entry in first if len(entry) == 2 and isinstance(entry[1], dict)]
    assert len(reset_ids) == 3 and reset_ids[0] == reset_ids[2]
    assert any(info.get("verdicts") for info in infos)
