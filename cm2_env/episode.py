"""Per-episode state of CM2ToolUse-v0: the visible transcript, the position in the reference dialogue, the sticky
checklist verdicts and the reward ledger. No I/O and no asyncio here: :mod:`cm2_env.env` feeds it.

- :class:`DialoguePlan`: what an episode needs from a reference dialogue (system prompt, the user message of every
  turn, the checklist items of every turn per variant, the OpenAI tools), computed once per dialogue.
- :class:`TurnVerdicts`: one reached turn: its items per variant, the incremental Eq. 2 state
  (:mod:`cm2_env.reward`) and the per-item verdict records exposed in ``info["verdicts"]``.
- :class:`EpisodeState`: the transcript (with an incrementally serialised observation), the current turn and
  action, the reached turns, usage counters, how the episode ended, and the payments per assignment mode.

Payments (:meth:`EpisodeState.payment`) follow the episode's :class:`cm2_env.reward.RewardAssignment`: "step"
pays each action's reward / L, "turn" pays R_t / L at the last action of a turn, "trajectory" pays nothing until
the end. The last action of an episode always pays ``R - (everything paid before)``, so every assignment sums to
the trajectory reward R (Eq. 4) -- also with ``L="reached"``, where L is only known at the end (earlier payments
use the turns reached so far).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from cm2_env.data.models import ChecklistItem, Dialogue
from cm2_env.data.turns import split_turns
from cm2_env.reward import (
    RewardAssignment,
    RewardRecord,
    TurnRecord,
    TurnRewardState,
    VariantTurnRewardState,
    normaliser,
    trajectory_reward,
)


#: How several checklist variants of a dialogue are used: only the first, or all aggregated (cm2_env.reward).
VARIANT_MODES: tuple[str, ...] = ("first", "mean", "majority")


@dataclass(frozen=True)
class DialoguePlan:
    """The parts of a reference dialogue an episode uses, as plain OpenAI dicts.

    ``checklists[t][k]`` are the items of turn t in variant k (variants in use only; an empty list for a turn
    without items). ``variant_keys[k]`` prefixes verdict ids when several variants are in use ("" otherwise).
    """

    dialogue: Dialogue
    system: tuple[dict[str, Any], ...]
    users: tuple[dict[str, Any], ...]
    checklists: tuple[tuple[tuple[ChecklistItem, ...], ...], ...]
    tools: tuple[dict[str, Any], ...]
    variant_keys: tuple[str, ...]

    @property
    def n_turns(self) -> int:
        return len(self.users)


def plan_dialogue(dialogue: Dialogue, variants: str = "first") -> DialoguePlan:
    """The :class:`DialoguePlan` of ``dialogue``; raises ValueError when a checklist variant's number of turns
    differs from the dialogue's (the fix is in the data: one item list per turn)."""
    turns = split_turns(dialogue.messages)
    if not turns:
        raise ValueError(f"dialogue {dialogue.id!r} has no user message, so no turn to play")
    system = tuple(_visible(m) for m in dialogue.messages[: turns[0].start])
    users = tuple(_visible(turn.user) for turn in turns)
    n_variants = len(dialogue.checklists) if variants != "first" else min(1, len(dialogue.checklists))
    for k in range(n_variants):
        if len(dialogue.checklists[k]) != len(turns):
            raise ValueError(
                f"dialogue {dialogue.id!r}: checklist variant {k} has {len(dialogue.checklists[k])} turn entries "
                f"but the dialogue has {len(turns)} turns; give exactly one item list per turn (docs/data_format.md)"
            )
    checklists = tuple(
        tuple(tuple(dialogue.checklists[k][t]) for k in range(n_variants)) if n_variants else ((),)
        for t in range(len(turns))
    )
    keys = tuple(f"v{k}." for k in range(n_variants)) if n_variants > 1 else ("",)
    tools = tuple(tool.model_dump(mode="json", exclude_none=True) for tool in dialogue.tools)
    return DialoguePlan(dialogue, system, users, checklists, tools, keys)


def _visible(message: Any) -> dict[str, Any]:
    """A reference system/user message as the agent sees it: role and content, verbatim."""
    return {"role": message.role, "content": message.content or ""}


def _record(passed: bool, first_action: int | None, source: str | None) -> dict[str, Any]:
    return {"passed": passed, "first_action": first_action, "source": source}


class TurnVerdicts:
    """Sticky verdicts and Eq. 2 rewards of one reached turn, over the variants in use."""

    def __init__(self, variants: Sequence[Sequence[ChecklistItem]], keys: Sequence[str], aggregation: str):
        self.variants = [list(items) for items in variants]
        self.keys = list(keys)
        if len(self.variants) > 1:
            self.reward_state: TurnRewardState | VariantTurnRewardState = VariantTurnRewardState(self.variants, aggregation)
            self._states = self.reward_state.states
        else:
            self.reward_state = TurnRewardState(self.variants[0])
            self._states = [self.reward_state]
        # Records are replaced, never mutated, so a shallow copy of this dict is a safe snapshot for info.
        self.records: dict[str, dict[str, Any]] = {
            key + item.id: _record(False, None, None) for key, items in zip(self.keys, self.variants) for item in items
        }

    def pending(self, k: int) -> list[ChecklistItem]:
        """The items of variant ``k`` that are not yet satisfied: the only ones worth asking the judge about."""
        satisfied = self._states[k].satisfied
        return [item for item in self.variants[k] if item.id not in satisfied]

    def update(self, passed_per_variant: Sequence[dict[str, str]]) -> float:
        """Record one action's verdicts (per variant: newly passed item id -> verdict source) and return the
        action's (aggregated) reward, Eq. 2 with dependency gating (cm2_env.reward)."""
        if isinstance(self.reward_state, VariantTurnRewardState):
            reward = self.reward_state.step([list(passed) for passed in passed_per_variant])
        else:
            reward = self.reward_state.step(list(passed_per_variant[0]))
        action = self._states[0].actions
        for key, passed in zip(self.keys, passed_per_variant):
            for item_id, source in passed.items():
                self.records[key + item_id] = _record(True, action, source)
        return reward

    def note_sources(self, k: int, sources: dict[str, str]) -> None:
        """Remember which judge last decided the still-unsatisfied items of variant ``k`` (for info/render)."""
        key = self.keys[k]
        for item_id, source in sources.items():
            record = self.records[key + item_id]
            if not record["passed"] and record["source"] != source:
                self.records[key + item_id] = _record(False, None, source)

    def strictness_met(self) -> bool:
        """Every ``required_for_next_turn`` item is satisfied -- in a strict majority of the variants in use."""
        met = sum(
            all(item.id in state.satisfied for item in items if item.required_for_next_turn)
            for items, state in zip(self.variants, self._states)
        )
        return met * 2 > len(self.variants)

    @property
    def actions(self) -> int:
        return self._states[0].actions

    @property
    def turn_reward(self) -> float:
        return float(self.reward_state.turn_reward)

    def history(self) -> TurnRecord:
        """This turn as a reward record holds it: its actions and, per variant in use, items and verdicts."""
        return {"steps": self.actions, "checklists": [state.history() for state in self._states]}


class EpisodeState:
    """One episode: transcript, position, verdicts, usage, end and payments (see the module docstring)."""

    def __init__(self, plan: DialoguePlan, *, aggregation: str, assignment: RewardAssignment, L: str):
        self.plan = plan
        self.aggregation = aggregation
        self.assignment = assignment
        self.L = L
        self.messages: list[dict[str, Any]] = []
        # The observation, built incrementally: "[" and every message's JSON joined by "," (the closing "]" is
        # added when an observation is asked for), and where each message's JSON starts in it. Each message is
        # serialised once, when appended, and the text grows in place, so a step never re-serialises or re-joins
        # the history: handing out an observation costs one copy of the text.
        self._json_text = "["
        self._json_starts: list[int] = []
        self.turns: list[TurnVerdicts] = []
        self._closed_verdicts: list[dict[str, dict[str, Any]]] = []  # snapshots of the turns before the current
        self._history: list[dict[str, Any]] | None = None
        self.turn_start = 0  # index in messages of the current turn's user message
        self.paid = 0.0
        self.failed = False
        self.failure: str | None = None
        self.end_reason: str | None = None
        self.usage = {"actions": 0, "tool_calls": 0, "invalid_calls": 0, "judge_requests": 0, "judged_items": 0}
        self.verdict_sources: dict[str, int] = {}
        for message in plan.system:
            self.append(message)
        self.start_turn()

    # --- transcript -----------------------------------------------------------------------------------

    def append(self, message: dict[str, Any]) -> None:
        """Add a message to the visible history (serialised once, here, for the observation)."""
        part = json.dumps(message, ensure_ascii=False)
        self.messages.append(message)
        text = self._json_text
        self._json_text = ""  # the local name holds the only reference: CPython then extends the text in place
        if self._json_starts:
            text += ","
        self._json_starts.append(len(text))
        text += part
        self._json_text = text

    @property
    def observation_length(self) -> int:
        """The length of the uncut observation: the JSON array of the whole visible history."""
        return len(self._json_text) + 1

    def observation(self, limit: int) -> str:
        """The JSON array of the visible history, or -- when longer than ``limit`` characters -- the system
        messages plus the most recent messages that fit (still a JSON array); cut hard only if even that fails."""
        text = self._json_text
        if len(text) + 1 <= limit:
            return text + "]"
        starts = self._json_starts
        n_head = min(len(self.plan.system), len(starts))
        # the JSON of message i is text[starts[i]:ends[i]] (a "," follows every one but the last)
        ends = [start - 1 for start in starts[1:]] + [len(text)]
        size = 2 + sum(ends[i] - starts[i] + 1 for i in range(n_head))
        first = len(starts)  # the oldest message of the tail that fits
        for i in range(len(starts) - 1, n_head - 1, -1):
            part = ends[i] - starts[i]
            if size + part + 1 > limit:
                break
            size += part + 1
            first = i
        pieces = ["["]
        if n_head:
            pieces.append(text[starts[0]:ends[n_head - 1]])
        if first < len(starts):
            if n_head:
                pieces.append(",")
            pieces.append(text[starts[first]:])
        pieces.append("]")
        cut = "".join(pieces)
        return cut if len(cut) <= limit else cut[:limit]

    # --- turns ----------------------------------------------------------------------------------------

    @property
    def turn(self) -> int:
        return len(self.turns) - 1

    @property
    def current(self) -> TurnVerdicts:
        return self.turns[-1]

    def start_turn(self) -> None:
        """Append the next reference user message verbatim and open its verdict book."""
        t = len(self.turns)
        if self.turns:  # the turn before is over: its records change no more, so one snapshot serves every step
            self._closed_verdicts.append(dict(self.turns[-1].records))
        self.turn_start = len(self.messages)
        self.append(dict(self.plan.users[t]))
        self.turns.append(TurnVerdicts(self.plan.checklists[t], self.plan.variant_keys, self.aggregation))

    def history(self) -> list[dict[str, Any]]:
        """The messages before the current turn (what a judge request calls ``history``): one list per turn,
        shared by the turn's requests (read-only), so a step does not copy the whole history for the judge."""
        if self._history is None or len(self._history) != self.turn_start:
            self._history = self.messages[: self.turn_start]
        return self._history

    @property
    def has_next_turn(self) -> bool:
        return len(self.turns) < self.plan.n_turns

    def verdicts(self) -> list[dict[str, dict[str, Any]]]:
        """Per reached turn, item id -> {passed, first_action, source}: a snapshot safe to hand out (finished
        turns are copied from the snapshot taken when they ended)."""
        return [*map(dict, self._closed_verdicts), dict(self.current.records)]

    # --- reward ---------------------------------------------------------------------------------------

    def divisor(self) -> int:
        return normaliser(self.L, self.plan.n_turns, len(self.turns))

    def trajectory_reward(self) -> float:
        """R (Eq. 4) over the turns reached so far."""
        return trajectory_reward([turn.turn_reward for turn in self.turns], self.plan.n_turns, self.L)

    def payment(self, action_reward: float, *, turn_ended: bool, episode_ended: bool) -> float:
        """What the environment pays for the action just recorded (see the module docstring)."""
        amount = self.assignment.payment(action_reward, self.current.turn_reward, turn_ended=turn_ended,
                                         episode_ended=episode_ended, divisor=self.divisor(),
                                         R=self.trajectory_reward() if episode_ended else 0.0, paid=self.paid)
        self.paid += amount
        return amount

    def end(self, reason: str, failure: str | None = None) -> None:
        self.end_reason = reason
        if failure is not None:
            self.failed, self.failure = True, failure

    @property
    def done(self) -> bool:
        return self.end_reason is not None

    def reward_record(self) -> RewardRecord:
        """What the episode earned and what the group computation needs (:mod:`cm2_env.reward.record`)."""
        return {
            "failed": self.failed,
            "turns": [turn.history() for turn in self.turns],
            "R": self.trajectory_reward(),
            "turn_rewards": [turn.turn_reward for turn in self.turns],
            "action_rewards": [list(map(float, turn.reward_state.action_rewards)) for turn in self.turns],
            "reference_turns": self.plan.n_turns,
            "L": self.L,
        }
