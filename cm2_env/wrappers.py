"""Stable-Baselines3 compatibility: a discrete action space and a fixed-size numeric observation.

SB3 algorithms need ``Box``/``Discrete`` spaces, while CM2ToolUse-v0 speaks text. Two wrappers bridge that, for
experiments and baselines with classic RL (an LLM policy should use the text env directly):

- :class:`CandidateActions`: ``Discrete(K)``. At every step a proposer offers up to K candidate action strings
  (``info["candidates"]``); action i plays candidate i. The default proposer, :class:`ReferenceCandidates`, offers
  the reference action for the current position of the dialogue among other actions of the same reference
  dialogue -- a small "pick the right tool call or reply" problem with the real checklist reward. It is
  stationary: the candidates depend only on (dialogue, turn, action), and their order is a hash of their text,
  so a position always looks the same and the right slot says nothing about correctness. Slots without a
  candidate are masked (:meth:`CandidateActions.action_masks`, for sb3-contrib's ``MaskablePPO``).
- :class:`HashedFeatures`: ``Box(-1, 1, ((1 + K) * dim,), float32)``. Signed feature hashing (CRC32 of lowercase
  word unigrams and bigrams, L2-normalised) of the observation text -- or, with ``features="turn"``, only of the
  current turn's messages, which costs the same at every step -- followed by one block per candidate when the
  env below offers candidates. Deterministic across processes (no salted ``hash()``).

Typical stack: ``HashedFeatures(CandidateActions(gym.make("CM2ToolUse-v0", reward_assignment="step"),
num_candidates=4), dim=256, features="turn")``. What a policy learns there is which action is right at each
position of the training dialogues -- memorisation from the real checklist reward, not generalisation to unseen
dialogues, which is the LLM policy's job.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np

from cm2_env.data import Dialogue, dialogue_turns
from cm2_env.toolcalls import render_message_hermes

#: A proposer: (info, K, rng) -> K slots, each an action string or None (no candidate: masked, plays "").
Proposer = Callable[[dict[str, Any], int, np.random.Generator], list[str | None]]

_WORD = re.compile(r"\w+")


def _digest(text: str) -> tuple[int, str]:
    """A sort key that is a stable hash of ``text`` (CRC32, the same in every process), ties broken by the text."""
    return zlib.crc32(text.encode("utf-8")), text


class ReferenceCandidates:
    """The reference action for (dialogue, turn, actions taken) plus up to K-1 other reference actions of the same
    dialogue. Past the reference's actions of a turn, the turn's final reply is the "right" one.

    Stationary: which distractors are offered is a hash of (dialogue, turn, action), and the offered actions are
    ordered by a hash of their text, so the same position always offers the same candidates in the same slots
    (``rng`` is not used). A dialogue with fewer than K distinct actions leaves slots empty (None).
    """

    def __init__(self, dialogues: Sequence[Dialogue]):
        self._actions: dict[str, list[list[str]]] = {
            d.id: [[render_message_hermes(a.assistant) for a in turn.actions] for turn in dialogue_turns(d)] for d in dialogues
        }

    def __call__(self, info: dict[str, Any], k: int, rng: np.random.Generator | None = None) -> list[str | None]:
        turns = self._actions[info["dialogue_id"]]
        t = min(info["turn"], len(turns) - 1)
        a = min(info["action"], len(turns[t]) - 1)
        right = turns[t][a] if turns[t] else ""
        position = f"{info['dialogue_id']}\x00{t}\x00{a}\x00"
        others = sorted({text for turn in turns for text in turn if text != right},
                        key=lambda text: _digest(position + text))
        offered: list[str | None] = sorted([right, *others[: k - 1]], key=_digest)
        return offered + [None] * (k - len(offered))


class CandidateActions(gym.Wrapper):
    """``Discrete(num_candidates)`` actions over proposed action strings (see the module docstring).

    ``info["candidates"]`` holds the K strings the next action chooses from ("" in an empty slot) and
    ``info["candidate_mask"]`` which slots hold a candidate; :meth:`action_masks` returns that mask for
    ``MaskablePPO``. Choosing an empty slot plays an empty reply. After the episode's last step the candidates
    and the mask stay those of the last position until ``reset``. A proposer that draws from ``rng`` gets a
    generator seeded by ``reset(seed=...)``, so a seeded episode is reproducible.
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
        self._mask = np.ones(num_candidates, dtype=bool)

    def _offer(self, info: dict[str, Any]) -> dict[str, Any]:
        slots = list(self.propose(info, self.num_candidates, self._rng))
        if len(slots) != self.num_candidates:
            raise ValueError(f"the proposer returned {len(slots)} candidates; it must return {self.num_candidates}")
        if not any(slot is not None for slot in slots):
            raise ValueError("the proposer offered no candidate: at least one slot must hold an action string")
        self._candidates = ["" if slot is None else str(slot) for slot in slots]
        self._mask = np.array([slot is not None for slot in slots], dtype=bool)
        info["candidates"] = list(self._candidates)
        info["candidate_mask"] = self._mask.tolist()
        return info

    def action_masks(self) -> np.ndarray:
        """Which of the K actions hold a candidate now (sb3-contrib's ``MaskablePPO`` reads this method)."""
        return self._mask.copy()

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


def turn_text(messages: Sequence[dict[str, Any]]) -> str:
    """The current turn's messages as text: from the last user message on (or all, before any)."""
    start = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=0)
    return "\n".join(json.dumps(m, ensure_ascii=False, sort_keys=True) for m in messages[start:])


class HashedFeatures(gym.Wrapper):
    """Text observation (+ candidates) -> a fixed-size float32 vector (see the module docstring).

    ``features``: "history" hashes the whole observation text (its cost grows with the episode); "turn" hashes only
    the current turn's messages (``info["messages"]`` from the last user message on: the user's request and what
    the agent and the tools did since), the same small cost at every step."""

    def __init__(self, env: gym.Env, dim: int = 256, features: str = "history"):
        super().__init__(env)
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if features not in ("history", "turn"):
            raise ValueError(f"features must be 'history' or 'turn', got {features!r}")
        self.dim = dim
        self.features = features
        self.blocks = 1 + int(getattr(env, "num_candidates", 0))
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (self.blocks * dim,), np.float32)

    def _features(self, observation: str, info: dict[str, Any]) -> np.ndarray:
        if self.features == "turn" and "messages" not in info:
            raise ValueError('features="turn" needs info["messages"] (CM2ToolUse-v0 provides it); this env gives '
                             'none: use features="history"')
        text = turn_text(info["messages"]) if self.features == "turn" else observation
        texts = [text, *info.get("candidates", [""] * (self.blocks - 1))][: self.blocks]
        texts += [""] * (self.blocks - len(texts))
        return np.concatenate([hashed_features(t, self.dim) for t in texts])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        observation, info = self.env.reset(seed=seed, options=options)
        return self._features(observation, info), info

    def step(self, action: Any):
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self._features(observation, info), float(reward), terminated, truncated, info
