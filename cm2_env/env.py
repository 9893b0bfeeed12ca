"""CM2ToolUse-v0: multi-turn, multi-step tool use with checklist rewards, as a Gymnasium environment.

Contract (docs/architecture.md, "One episode"; docs/method.md, "Episodes"):

- An episode replays one reference dialogue. ``reset`` picks it (``options={"dialogue_id": ...}``, else drawn with
  the env's seeded ``np_random``) and returns the system prompt and the first user message.
- Each ``step(action)`` is exactly one agent action, i.e. one assistant message: text with an optional
  ``<think>`` block and either ``<tool_call>`` blocks (Hermes/Qwen) or a final reply (:mod:`cm2_env.toolcalls`).
  Its calls run concurrently through the simulator; then the judge is asked about the current turn's items that
  are not yet satisfied; verdicts are sticky; the action's reward is Eq. 2 with dependency gating
  (:mod:`cm2_env.reward`). A final reply ends the turn: with ``strict=True`` every ``required_for_next_turn``
  item must be satisfied, else the episode terminates; otherwise the next reference user message follows
  verbatim, and after the last reference turn the episode terminates.
- Observation and action are strings (:class:`cm2_env.spaces.TextSpace`). The observation is the JSON array of
  the visible OpenAI messages. ``info`` carries the same history structured (see :meth:`CM2ToolUseEnv._info`),
  so LLM policies never re-parse the observation. Treat everything returned as read-only.
- Reward: every assignment mode ("step", "turn", "trajectory") pays the trajectory reward R (Eq. 4) in total;
  modes differ only in when (:mod:`cm2_env.episode`).
- ``terminated``: the dialogue is complete, strictness failed, or an invalid call under
  ``invalid_call_policy="terminate"``. ``truncated``: a limit was hit (actions per episode, actions per turn,
  turns, observation length), the caller ended the episode (:meth:`CM2ToolUseEnv.atruncate`, e.g. when the
  policy's context is full), or the episode failed -- a simulator or judge error, flagged ``info["failed"]``
  (the trainer excludes failed episodes). The env never raises because of what the agent, simulator or judge
  did.
- Invalid calls (malformed ``<tool_call>`` text, unknown tool, schema violation): with "respond" (default) the
  agent gets an error tool message and the episode goes on; an action with malformed call text runs none of
  its calls. With "terminate" the episode ends there, unjudged (the released code's behaviour).
- ``areset``/``astep`` are the coroutines; ``reset``/``step`` run them on a private event loop. Deterministic
  simulator and judge make a deterministic env: nothing in ``info`` depends on timing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Sequence, TypedDict

import gymnasium as gym

from cm2_env.data.io import load_dialogues
from cm2_env.data.models import Dialogue
from cm2_env.data.turns import turn_complete
from cm2_env.episode import VARIANT_MODES, DialoguePlan, EpisodeState, plan_dialogue
from cm2_env.judge.base import ChecklistJudge, JudgeRequest, judge_all
from cm2_env.backends import build_backends
from cm2_env.loop import PrivateLoop
from cm2_env.render import render_transcript
from cm2_env.reward import L_MODES, RewardAssignment, RewardRecord, reward_assignment as as_assignment
from cm2_env.reward.items import check_choice
from cm2_env.simulator.base import INVALID_CALL_SOURCES, ToolResult, ToolSimulator
from cm2_env.spaces import TextSpace
from cm2_env.toolcalls import ParseError, ParsedAction, ParsedCall, parse, to_assistant_message

INVALID_CALL_POLICIES: tuple[str, ...] = ("respond", "terminate")


class StepInfo(TypedDict, total=False):
    """The ``info`` of :meth:`CM2ToolUseEnv.reset` and :meth:`CM2ToolUseEnv.step` (treat it as read-only).

    Always: ``dialogue_id``; ``messages`` (the visible history as OpenAI messages) and ``tools`` (OpenAI function
    tools) -- what an LLM policy needs, structured; ``turn`` (0-based) and ``action`` (actions taken in the
    turn); ``reference_turns``; ``verdicts`` (per reached turn, item id -> ``{"passed", "first_action",
    "source"}``); ``usage`` (per-episode counters: actions, tool calls, invalid calls, judge requests, judged items,
    verdict sources, simulator usage; no timings); ``failed`` and ``failure`` (a simulator or judge error).
    At the end of an episode also ``end_reason``, ``R`` (the trajectory reward, Eq. 4) and ``reward_record``
    (:class:`cm2_env.reward.RewardRecord`, what group advantages are computed from). ``action_clipped`` when an
    action was cut to ``max_action_length``.
    """

    dialogue_id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    turn: int
    action: int
    reference_turns: int
    verdicts: list[dict[str, dict[str, Any]]]
    usage: dict[str, Any]
    failed: bool
    failure: str | None
    end_reason: str
    R: float
    reward_record: RewardRecord
    action_clipped: bool
#: Defaults, in characters: a generous history (token budgets are the policy's business) and about the
#: released 8k-token response limit for one action.
DEFAULT_MAX_OBSERVATION_LENGTH = 1_000_000
DEFAULT_MAX_ACTION_LENGTH = 32_768


class CM2ToolUseEnv(gym.Env[str, str]):
    """The CM2 tool-use environment (see the module docstring for the contract).

    Args:
        dataset: a bundled dataset name ("tooltalk"), a JSONL/JSON path, or a list of Dialogue objects / records.
        simulator: a ToolSimulator or a spec for :func:`cm2_env.simulator.make_simulator` ("replay", "openai:...").
        judge: a ChecklistJudge or a spec for :func:`cm2_env.judge.make_judge` ("rule", "openai:...").
        reward_assignment: when reward is paid (the total is always R): a :class:`cm2_env.reward.RewardAssignment`
            or the name of a built-in one, "step" | "turn" | "trajectory".
        normaliser: L of Eq. 4, "reference" (reference turns, as released) or "reached" (turns reached).
        strict: end the episode after a turn whose required items are not all satisfied.
        max_actions: agent actions per episode (the released code's limit: 30 generations per episode).
        max_actions_per_turn: agent actions per turn (cm2's own guard against a turn that never replies; the
            released code has no per-turn limit, so the default equals the per-episode one).
        max_turns: reference turns played per episode (released: 30).
        invalid_call_policy: "respond" (error tool message, continue) or "terminate".
        checklist_variants: "first" (variant 0 only) or "mean" / "majority" aggregation over all variants.
        max_observation_length / max_action_length: sizes of the text spaces, in characters. A longer action is
            cut to the limit (``info["action_clipped"]``); a longer history truncates the episode and the last
            observation keeps the system prompt and the most recent messages that fit.
        simulator_options / judge_options: keyword options for the factories when a spec string is given.
        render_mode: None or "ansi" (``render()`` returns the transcript with verdicts).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        dataset: str | Sequence[Dialogue | dict] = "tooltalk",
        simulator: str | ToolSimulator = "replay",
        judge: str | ChecklistJudge = "rule",
        *,
        reward_assignment: str | RewardAssignment = "trajectory",
        normaliser: str = "reference",
        strict: bool = True,
        max_actions: int = 30,
        max_actions_per_turn: int = 30,
        max_turns: int = 30,
        invalid_call_policy: str = "respond",
        checklist_variants: str = "first",
        max_observation_length: int = DEFAULT_MAX_OBSERVATION_LENGTH,
        max_action_length: int = DEFAULT_MAX_ACTION_LENGTH,
        simulator_options: dict[str, Any] | None = None,
        judge_options: dict[str, Any] | None = None,
        render_mode: str | None = None,
    ):
        if not isinstance(strict, bool):
            raise TypeError(f"strict must be True or False, got {strict!r}")
        if isinstance(dataset, str) and not dataset.strip():
            raise ValueError("dataset is empty; give a bundled dataset name ('tooltalk'), a JSONL/JSON path, or a "
                             "list of dialogues")
        assignment = as_assignment(reward_assignment)
        check_choice("normaliser", normaliser, L_MODES)
        check_choice("invalid_call_policy", invalid_call_policy, INVALID_CALL_POLICIES)
        check_choice("checklist_variants", checklist_variants, VARIANT_MODES)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        for name, value in (("max_actions", max_actions), ("max_actions_per_turn", max_actions_per_turn),
                            ("max_turns", max_turns)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.reward_assignment = assignment
        self.normaliser = normaliser
        self.strict = bool(strict)
        self.max_actions = max_actions
        self.max_actions_per_turn = max_actions_per_turn
        self.max_turns = max_turns
        self.invalid_call_policy = invalid_call_policy
        self.checklist_variants = checklist_variants
        self.render_mode = render_mode
        self.observation_space = TextSpace(max_observation_length)
        self.action_space = TextSpace(max_action_length)

        dialogues = load_dialogues(dataset)
        if not dialogues:
            raise ValueError(f"dataset {dataset!r} holds no dialogue; give a file with at least one record")
        self._dialogues: list[Dialogue] = dialogues
        self._index: dict[str, int] = {}
        for i, dialogue in enumerate(dialogues):
            if dialogue.id in self._index:
                raise ValueError(f"dataset {dataset!r}: dialogue id {dialogue.id!r} occurs twice; ids must be unique")
            self._index[dialogue.id] = i
        self._plans: dict[str, DialoguePlan] = {}
        # backends built here from spec strings are owned (and closed by close()); objects are used as given
        self._backends = build_backends(simulator, judge, simulator_options=simulator_options,
                                        judge_options=judge_options)
        self.simulator = self._backends.simulator
        self.judge = self._backends.judge

        self._episode: EpisodeState | None = None
        self._sim_episode: Any = None
        self._sync = PrivateLoop("use `await env.unwrapped.areset(...)` / `await env.unwrapped.astep(...)` there")

    # --- construction ---------------------------------------------------------------------------------

    @property
    def dialogues(self) -> list[Dialogue]:
        """The dataset (read-only)."""
        return self._dialogues

    def _plan(self, dialogue: Dialogue) -> DialoguePlan:
        plan = self._plans.get(dialogue.id)
        if plan is None:
            plan = self._plans[dialogue.id] = plan_dialogue(dialogue, self.checklist_variants)
        return plan

    def _choose(self, options: dict[str, Any] | None) -> Dialogue:
        options = options or {}
        unknown = set(options) - {"dialogue_id", "dialogue_index"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; supported: 'dialogue_id', 'dialogue_index'")
        if options.get("dialogue_id") is not None:
            dialogue_id = str(options["dialogue_id"])
            if dialogue_id not in self._index:
                import difflib

                close = difflib.get_close_matches(dialogue_id, self._index, n=3)
                hint = f"; did you mean {close}?" if close else ""
                raise ValueError(f"no dialogue with id {dialogue_id!r} in the dataset ({len(self._index)} dialogues){hint}")
            return self._dialogues[self._index[dialogue_id]]
        if options.get("dialogue_index") is not None:
            index = int(options["dialogue_index"])
            if not 0 <= index < len(self._dialogues):
                raise ValueError(f"dialogue_index {index} is outside [0, {len(self._dialogues)})")
            return self._dialogues[index]
        return self._dialogues[int(self.np_random.integers(len(self._dialogues)))]

    # --- the async API ----------------------------------------------------------------------------------

    async def areset(self, *, seed: int | None = None,
                     options: dict[str, Any] | None = None) -> tuple[str, StepInfo]:
        """Start an episode; returns ``(observation, info)``. Same semantics as :meth:`reset`."""
        super().reset(seed=seed)
        dialogue = self._choose(options)
        plan = self._plan(dialogue)
        self._episode = EpisodeState(plan, aggregation=self._aggregation, assignment=self.reward_assignment,
                                     L=self.normaliser)
        self._sim_episode = self.simulator.start_episode(dialogue)
        return self._episode.observation(self.observation_space.max_length), self._info()

    async def astep(self, action: str) -> tuple[str, float, bool, bool, StepInfo]:
        """Take one agent action; returns ``(observation, reward, terminated, truncated, info)``.

        ``observation``: the JSON array of the visible history (cut to ``max_observation_length``). ``reward``: the
        payment of the reward assignment for this action (over an episode the payments sum to R).
        ``terminated``: the dialogue is complete, strictness failed after a turn's reply, or an invalid call under
        ``invalid_call_policy="terminate"``. ``truncated``: a limit was hit (actions per episode or per turn,
        turns, observation length) or a backend failed (``info["failed"]``). ``info``: :class:`StepInfo`.
        """
        episode = self._episode
        if episode is None:
            raise RuntimeError("step() before reset(): call env.reset() (or await env.areset()) first")
        if episode.done:
            raise RuntimeError(f"the episode has ended ({episode.end_reason}); call env.reset() to start a new one")
        clipped = isinstance(action, str) and len(action) > self.action_space.max_length
        text = action[: self.action_space.max_length] if clipped else action
        # parse() reads None as "" (OpenAI messages carry content: null); an action must be a string, None too
        parsed = parse(text) if text is not None else ParsedAction(
            "", "", [], [ParseError("not_text", "the action must be a string, got NoneType", "None")])
        episode.usage["actions"] += 1
        turn = episode.current
        invalid = await self._act(episode, parsed, text)

        passed: list[dict[str, str]] = [{} for _ in turn.variants]
        if not episode.failed and not (invalid and self.invalid_call_policy == "terminate"):
            passed = await self._judge(episode)
        action_reward = turn.update(passed)

        final_reply = turn_complete(episode.messages[episode.turn_start:])
        terminated = truncated = next_turn = False
        if episode.failed:
            truncated = True
        elif invalid and self.invalid_call_policy == "terminate":
            episode.end("invalid_call")
            terminated = True
        elif final_reply:
            terminated, truncated = self._end_turn(episode)
            next_turn = not episode.done
        elif episode.usage["actions"] >= self.max_actions:
            episode.end("max_actions")
            truncated = True
        elif turn.actions >= self.max_actions_per_turn:
            episode.end("max_actions_per_turn")
            truncated = True
        # Paid before the next turn opens, so that "turn" pays this turn's R_t with this turn's L.
        reward = episode.payment(action_reward, turn_ended=final_reply or episode.done, episode_ended=episode.done)
        if next_turn:
            episode.start_turn()
        if not episode.done and episode.observation_length > self.observation_space.max_length:
            episode.end("observation_length")
            truncated = True
            reward += episode.payment(0.0, turn_ended=False, episode_ended=True)  # settles R
        info = self._info()
        if clipped:
            info["action_clipped"] = True
        return episode.observation(self.observation_space.max_length), reward, terminated, truncated, info

    async def atruncate(self, reason: str) -> tuple[float, dict[str, Any]]:
        """End the running episode from outside, as truncated with ``end_reason=reason`` -- for limits the
        environment cannot see, such as the policy's context length. Returns ``(reward, info)``: the payment that
        settles the episode (every assignment mode then sums to R over the turns reached) and the final info."""
        episode = self._episode
        if episode is None or episode.done:
            raise RuntimeError("atruncate() needs a running episode: call reset() first, and not after it ended")
        episode.end(reason)
        reward = episode.payment(0.0, turn_ended=True, episode_ended=True)
        return reward, self._info()

    def truncate(self, reason: str) -> tuple[float, dict[str, Any]]:
        """:meth:`atruncate` on the env's private event loop."""
        return self._run(self.atruncate(reason))

    # --- the steps of astep --------------------------------------------------------------------------------

    async def _act(self, episode: EpisodeState, parsed: ParsedAction, text: Any) -> bool:
        """Record the assistant message and its tool responses; returns whether the action held an invalid call.

        Malformed call text is answered with one error tool message per problem and none of the action's calls
        run (the message keeps the text as written, so the judge and the agent see what went wrong)."""
        if not parsed.errors:
            episode.append(to_assistant_message(parsed))
            return await self._run_calls(episode, parsed) if parsed.calls else False
        episode.usage["invalid_calls"] += len(parsed.errors)
        episode.append({"role": "assistant", "content": text if isinstance(text, str) else ""})
        for k, error in enumerate(parsed.errors):
            content = json.dumps({"error": error.message, "kind": error.kind}, ensure_ascii=False)
            episode.append({"role": "tool", "tool_call_id": f"invalid_{k}", "name": "invalid_tool_call", "content": content})
        return True

    async def _run_calls(self, episode: EpisodeState, parsed: ParsedAction) -> bool:
        """Execute the action's calls concurrently and append the tool messages; returns whether any call was
        invalid (unknown tool, schema error). A simulator failure marks the episode failed."""
        calls = parsed.calls
        ids = [call["id"] for call in episode.messages[-1]["tool_calls"]]
        episode.usage["tool_calls"] += len(calls)
        if len(calls) == 1:  # the common case: no gather() overhead
            results = [await self._execute(calls[0], episode.turn)]
        else:
            results = await asyncio.gather(*(self._execute(call, episode.turn) for call in calls))
        invalid = False
        for call, call_id, result in zip(calls, ids, results):
            if isinstance(result, Exception):  # a backend bug must not crash a training run: it fails the episode
                episode.end("failed", f"simulator raised {type(result).__name__} on {call.name}: {result}")
                result = ToolResult(json.dumps({"error": "simulator failure"}), "failed")
            episode.append({"role": "tool", "tool_call_id": call_id, "name": call.name, "content": result.content})
            if result.source == "failed" and not episode.failed:
                episode.end("failed", f"simulator failed on {call.name}: {result.error or result.content}")
            elif result.source in INVALID_CALL_SOURCES:
                invalid = True
                episode.usage["invalid_calls"] += 1
        return invalid

    async def _execute(self, call: ParsedCall, turn: int) -> ToolResult | Exception:
        try:
            return await self._sim_episode.execute(call.name, call.arguments, turn=turn)
        except Exception as exc:  # noqa: BLE001 - reported by _run_calls as an episode failure
            return exc

    async def _judge(self, episode: EpisodeState) -> list[dict[str, str]]:
        """Ask the judge about the pending items of the current turn (one request per variant, concurrently);
        returns, per variant, the newly passed item ids with their verdict source. Marks the episode failed when
        a verdict is missing or undecided, or the judge raises."""
        turn = episode.current
        history = episode.history()
        current = episode.messages[episode.turn_start:]
        requests = [
            (k, JudgeRequest(episode.plan.dialogue, episode.turn, turn.actions + 1, pending, history, current))
            for k, pending in ((k, turn.pending(k)) for k in range(len(turn.variants)))
            if pending
        ]
        passed: list[dict[str, str]] = [{} for _ in turn.variants]
        if not requests:
            return passed
        episode.usage["judge_requests"] += len(requests)
        try:
            judgements = await judge_all(self.judge, [request for _, request in requests])
        except Exception as exc:  # noqa: BLE001 - a judge bug or outage fails the episode, never the run
            episode.end("failed", f"judge raised {type(exc).__name__}: {exc}")
            return passed
        for (k, request), judgement in zip(requests, judgements):
            episode.usage["judged_items"] += len(request.items)
            if judgement.undecided:
                item_id, reason = next(iter(judgement.undecided.items()))
                episode.end("failed", f"judge failed on item {item_id} of turn {episode.turn}: {reason}")
                return [{} for _ in turn.variants]
            for source in judgement.sources.values():
                episode.verdict_sources[source] = episode.verdict_sources.get(source, 0) + 1
            passed[k] = judgement.passed
            turn.note_sources(k, judgement.sources)
        return passed

    def _end_turn(self, episode: EpisodeState) -> tuple[bool, bool]:
        """After a final reply: strictness, then the next user message or the end. Returns (terminated, truncated)."""
        if self.strict and not episode.current.strictness_met():
            episode.end("strictness")
            return True, False
        if not episode.has_next_turn:
            episode.end("dialogue_complete")
            return True, False
        if len(episode.turns) >= self.max_turns:
            episode.end("max_turns")
            return False, True
        return False, False  # the caller opens the next turn after paying for this one

    @property
    def _aggregation(self) -> str:
        return "mean" if self.checklist_variants == "first" else self.checklist_variants

    def _info(self) -> StepInfo:
        """The current :class:`StepInfo`."""
        episode = self._episode
        usage = dict(episode.usage)
        usage["verdict_sources"] = dict(episode.verdict_sources)
        usage["simulator"] = dict(self._sim_episode.usage()) if hasattr(self._sim_episode, "usage") else {}
        info: StepInfo = {
            "dialogue_id": episode.plan.dialogue.id,
            "messages": list(episode.messages),
            "tools": list(episode.plan.tools),
            "turn": episode.turn,
            "action": episode.current.actions,
            "reference_turns": episode.plan.n_turns,
            "verdicts": episode.verdicts(),
            "usage": usage,
            "failed": episode.failed,
            "failure": episode.failure,
        }
        if episode.done:
            record = episode.reward_record()
            info["end_reason"] = episode.end_reason
            info["R"] = record["R"]
            info["reward_record"] = record
        return info

    # --- the sync API -------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, StepInfo]:
        """Start an episode: ``options={"dialogue_id": ...}`` (or ``"dialogue_index"``) picks the dialogue, else
        the env's ``np_random`` (seeded by ``seed``) draws one. Returns ``(observation, info)`` with the system
        prompt and the first user message (:class:`StepInfo`). Runs :meth:`areset` on the env's private loop."""
        return self._run(self.areset(seed=seed, options=options))

    def step(self, action: str) -> tuple[str, float, bool, bool, StepInfo]:
        """Take one agent action: see :meth:`astep` for what it returns. Runs it on the env's private loop."""
        return self._run(self.astep(action))

    def _run(self, coroutine: Any) -> Any:
        return self._sync.run(coroutine)

    def render(self) -> str | None:
        """With render_mode "ansi": the transcript so far with each item's verdict after the action that
        satisfied it, and the unsatisfied items at the end of each turn."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; create the env with render_mode='ansi'")
            return None
        if self._episode is None:
            return ""
        return render_transcript(self._episode, end_reason=self._episode.end_reason)

    def close(self) -> None:
        """Close backends this env built from spec strings (not objects passed in) and the private loop."""
        if self._backends.owned:
            try:
                self._run(self._backends.aclose())
            except RuntimeError:  # closed inside a running loop (async use): that loop's owner closes them
                pass
        self._sync.close()
