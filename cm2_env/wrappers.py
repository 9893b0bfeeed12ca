"""Stable-Baselines3 compatibility: a discrete action space and a fixed-size numeric observation.

SB3 algorithms need ``Box``/``Discrete`` spaces, while CM2ToolUse-v0 speaks text. Two wrappers bridge that, for
experiments and baselines with classic RL (an LLM policy should use the text env directly):

- :class:`CandidateActions`: ``Discrete(K)``. At every step a proposer offers K candidate action strings
  (``info["candidates"]``); action i plays candidate i. The default proposer, :class:`ReferenceCandidates`, offers
  the reference action for the current position of the dialogue among K-1 other actions of the same reference
  dialogue, in a random order -- a small "pick the right tool call or reply" problem with the real checklist reward.
- :class:`HashedFeatures`: ``Box(-1, 1, ((1 + K) * dim,), float32)``. Signed feature hashing (CRC32 of lowercase
  word unigrams and bigrams, L2-normalised) of the observation text, followed by one block per candidate when
  the env below offers candidates. Deterministic across processes (no salted ``hash()``).

Typical stack: ``HashedFeatures(CandidateActions(gym.make("CM2ToolUse-v0"), num_candidates=4), dim=256)``.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np

from cm2_env.data import Dialogue, dialogue_turns
from cm2_env.toolcalls import render_message_hermes

#: A proposer: (info, K, rng) -> exactly K action strings.
Proposer = Callable[[dict[str, Any], int, np.random.Generator], list[str]]

_WORD = re.compile(r"\w+")


class ReferenceCandidates:
    """The reference action for (dialogue, turn, actions taken) plus K-1 distinct other reference actions of the
    same dialogue, shuffled. Past the reference's actions of a turn, the turn's final reply is the "right" one.
    Slots left over in short dialogues are filled with an empty reply."""

    def __init__(self, dialogues: Sequence[Dialogue]):
        self._actions: dict[str, list[list[str]]] = {
            d.id: [[render_message_hermes(a.assistant) for a in turn.actions] for turn in dialogue_turns(d)] for d in dialogues
        }

    def __call__(self, info: dict[str, Any], k: int, rng: np.random.Generator) -> list[str]:
        turns = self._actions[info["dialogue_id"]]
        turn = turns[min(info["turn"], len(turns) - 1)]
        right = turn[min(info["action"], len(turn) - 1)] if turn else ""
        others = sorted({text for t in turns for text in t if text != right})
        picked = [others[i] for i in rng.permutation(len(others))[: k - 1]]
        candidates = [right, *picked] + [""] * (k - 1 - len(picked))
        return [candidates[i] for i in rng.permutation(k)]


class CandidateActions(gym.Wrapper):
    """``Discrete(num_candidates)`` actions over proposed action strings (see the module docstring).

    ``info["candidates"]`` holds the K strings the next action chooses from. The candidates' order is drawn from
    a generator seeded by ``reset(seed=...)``, so a seeded episode is reproducible.
    """

    def __init__(self, env: gym.Env, num_candidates: int = 4, propose: Proposer | None = None):
        super().__init__(env)
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        self.num_candidates = num_candidates
        self.propose = propose or ReferenceCandidates(env.unwrapped.dialogues)
        self.action_space = gym.spaces.Discrete(num_candidates)
        self._rng = np.random.default_rng()
        self._candidates: list[str] = [""] * num_candidates

    def _offer(self, info: dict[str, Any]) -> dict[str, Any]:
        candidates = list(self.propose(info, self.num_candidates, self._rng))
        if len(candidates) != self.num_candidates:
            raise ValueError(f"the proposer returned {len(candidates)} candidates; it must return {self.num_candidates}")
        self._candidates = candidates
        info["candidates"] = list(candidates)
        return info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        observation, info = self.env.reset(seed=seed, options=options)
        return observation, self._offer(info)

    def step(self, action: int):
        observation, reward, terminated, truncated, info = self.env.step(self._candidates[int(action)])
        if not (terminated or truncated):
            info = self._offer(info)
        return observation, reward, terminated, truncated, info


def hashed_features(text: str, dim: int) -> np.ndarray:
    """Signed hashing of lowercase word unigrams and bigrams of ``text`` into ``dim`` floats, L2-normalised."""
    vector = np.zeros(dim, dtype=np.float32)
    words = _WORD.findall(text.lower())
    for feature in (*words, *(a + " " + b for a, b in zip(words, words[1:]))):
        code = zlib.crc32(feature.encode("utf-8"))
        vector[code % dim] += 1.0 if (code >> 31) & 1 else -1.0
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm else vector


class HashedFeatures(gym.Wrapper):
    """Text observation (+ candidates) -> a fixed-size float32 vector (see the module docstring)."""

    def __init__(self, env: gym.Env, dim: int = 256):
        super().__init__(env)
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.blocks = 1 + int(getattr(env, "num_candidates", 0))
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (self.blocks * dim,), np.float32)

    def _features(self, observation: str, info: dict[str, Any]) -> np.ndarray:
        texts = [observation, *info.get("candidates", [""] * (self.blocks - 1))][: self.blocks]
        texts += [""] * (self.blocks - len(texts))
        return np.concatenate([hashed_features(text, self.dim) for text in texts])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        observation, info = self.env.reset(seed=seed, options=options)
        return self._features(observation, info), info

    def step(self, action: Any):
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self._features(observation, info), float(reward), terminated, truncated, info
