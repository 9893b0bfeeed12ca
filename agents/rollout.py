"""The concurrent rollout engine: groups of G episodes per dialogue, all in one event loop.

Every episode is its own :class:`~cm2_env.env.CM2ToolUseEnv` (sharing one simulator and one judge object), driven
through ``areset``/``astep``; a semaphore bounds how many episodes are in flight. A batch therefore costs about as
long as its longest chain of sequential LLM calls. With ``out_dir`` each episode is appended to
``trajectories.jsonl`` (and flushed) the moment it ends, so a run killed half-way keeps every finished episode;
``resume=True`` skips the episodes on disk that did not fail and runs the rest (failed ones again). ``summary.json`` is written at the end.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from agents.base import AGENT_CONTEXT_KEYS, Agent, AgentStep, ContextLimitExceeded
from agents.token_path import sampling_seed
from cm2_env.progress import progress as progress_reporter
from cm2_env.records import flatten, resume_jsonl
from cm2_env.data import Dialogue


@dataclass
class EpisodeResult:
    """One finished episode: what the agent did, what it earned, and the reward record for group advantages."""

    dialogue_id: str
    group_index: int
    steps: list[AgentStep]
    messages: list[dict[str, Any]]
    rewards: list[float]
    reward_record: dict[str, Any]
    verdicts: Any
    failed: bool
    failure: str | None
    truncated: bool
    turns_reached: int
    reference_turns: int
    usage: dict[str, Any] = field(default_factory=dict)
    end_reason: str | None = None

    @property
    def R(self) -> float | None:
        """The trajectory reward (Eq. 4): the sum of the episode's rewards in every assignment mode; None for a
        failed episode (it has no reward: it is excluded from group statistics and from the loss)."""
        return None if self.failed else float(sum(self.rewards))

    @property
    def ended_early(self) -> bool:
        """Terminated by strictness before the last reference turn (not a failure, not a truncation)."""
        return not self.failed and not self.truncated and self.turns_reached < self.reference_turns

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> "EpisodeResult":
        """An episode read back from ``trajectories.jsonl`` (:meth:`to_json`; token ids are not kept there)."""
        steps = [AgentStep(text=a.get("text", ""), message={}, usage=dict(a.get("usage") or {}))
                 for a in record.get("actions", [])]
        return cls(dialogue_id=record["dialogue_id"], group_index=int(record["group_index"]), steps=steps,
                   messages=list(record.get("messages", [])), rewards=[float(r) for r in record.get("rewards", [])],
                   reward_record=dict(record.get("reward_record") or {}), verdicts=record.get("verdicts"),
                   failed=bool(record.get("failed")), failure=record.get("failure"),
                   truncated=bool(record.get("truncated")), turns_reached=int(record.get("turns_reached", 0)),
                   reference_turns=int(record.get("reference_turns", 0)), usage=dict(record.get("usage") or {}),
                   end_reason=record.get("end_reason"))

    def to_json(self, include_tokens: bool = False) -> dict[str, Any]:
        steps = []
        for step in self.steps:
            record = {"text": step.text, "usage": step.usage}
            if include_tokens:
                record.update(prompt_ids=step.prompt_ids, completion_ids=step.completion_ids, logprobs=step.logprobs)
            steps.append(record)
        return {
            "dialogue_id": self.dialogue_id, "group_index": self.group_index, "R": self.R, "rewards": self.rewards,
            "failed": self.failed, "failure": self.failure, "truncated": self.truncated,
            "ended_early": self.ended_early, "end_reason": self.end_reason, "turns_reached": self.turns_reached,
            "reference_turns": self.reference_turns, "reward_record": self.reward_record,
            "verdicts": self.verdicts, "usage": self.usage, "messages": self.messages, "actions": steps,
        }


async def arun_episode(env: Any, agent: Agent, dialogue_id: str, group_index: int = 0,
                       seed: int | None = None, *, share_verdicts: bool = False) -> EpisodeResult:
    """Run one episode of ``env`` on ``dialogue_id`` with ``agent`` until it terminates or is truncated.

    With a ``seed`` (the rollout seed) the episode is reproducible: the env is reset with
    ``sampling_seed(seed, dialogue_id, group_index)`` and action i is sampled with
    ``context["sampling_seed"] = sampling_seed(seed, dialogue_id, group_index, i)`` (:mod:`agents.token_path`), so
    its draws depend on that key alone, never on timing or on the other episodes running beside it.

    The agent's ``context`` holds :data:`~agents.base.AGENT_CONTEXT_KEYS` of ``info`` (where it is, not how it
    is scored); ``share_verdicts=True`` passes the whole ``info``, verdicts included. An agent that raises
    :class:`~agents.base.ContextLimitExceeded` ends the episode as truncated (``max_prompt_tokens``); any other
    exception of the agent fails this episode alone (``failed``, with the error as ``failure``).
    """
    reset_seed = None if seed is None else sampling_seed(seed, dialogue_id, group_index)
    _, info = await env.areset(seed=reset_seed, options={"dialogue_id": dialogue_id})
    steps: list[AgentStep] = []
    rewards: list[float] = []
    terminated = truncated = False
    policy_failure: str | None = None
    while not (terminated or truncated):
        context = dict(info) if share_verdicts else {k: info[k] for k in AGENT_CONTEXT_KEYS if k in info}
        if seed is not None:
            context["sampling_seed"] = sampling_seed(seed, dialogue_id, group_index, len(steps))
        try:
            step = await agent.act(info["messages"], info["tools"], context=context)
        except ContextLimitExceeded:
            reward, info = await env.atruncate("max_prompt_tokens")
            rewards.append(float(reward))
            truncated = True
            break
        except Exception as exc:  # noqa: BLE001 - a policy error fails this episode, never the batch
            policy_failure = f"policy raised {type(exc).__name__}: {exc}"[:500]
            break
        steps.append(step)
        _, reward, terminated, truncated, info = await env.astep(step.text)
        rewards.append(float(reward))
    record = info.get("reward_record", {})
    failed = bool(info.get("failed")) or policy_failure is not None
    if policy_failure is not None:
        record = {**record, "failed": True}
    return EpisodeResult(
        dialogue_id=dialogue_id,
        group_index=group_index,
        steps=steps,
        messages=list(info["messages"]),
        rewards=rewards,
        reward_record=record,
        verdicts=info.get("verdicts"),
        failed=failed,
        failure=policy_failure or info.get("failure"),
        truncated=bool(truncated) or policy_failure is not None,
        turns_reached=len(record.get("turns", [])),
        reference_turns=int(info.get("reference_turns", len(record.get("turns", [])))),
        usage=dict(info.get("usage", {})),
        end_reason=info.get("end_reason") or ("policy_failed" if policy_failure else None),
    )


async def arun_rollouts(
    dialogues: Sequence[Dialogue],
    agent: Agent,
    *,
    group_size: int = 1,
    env_kwargs: Mapping[str, Any] | None = None,
    concurrency: int = 64,
    out_dir: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    share_verdicts: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    run_info: Mapping[str, Any] | None = None,
) -> list[EpisodeResult]:
    """Run ``group_size`` episodes of every dialogue concurrently; results are ordered by (dialogue, group index).

    ``env_kwargs`` go to :class:`~cm2_env.env.CM2ToolUseEnv`; a simulator or judge given as a spec string (with
    its ``simulator_options`` / ``judge_options``) is built once here, shared by all episodes, and closed at the
    end (:func:`cm2_env.backends.build_backends`). Episode ``(d, g)`` runs with the rollout seed ``seed`` (see
    :func:`arun_episode`): its resets and sampling depend on ``(seed, dialogue id, g)``, not on the order in which
    episodes finish, so the results (ordered by dialogue, then group index) are the same at any concurrency.
    A dialogue listed twice forms one larger group: its second listing has group indices ``group_size ..
    2 * group_size - 1``, so no two episodes share a sampling key.

    ``out_dir``: episodes are appended to ``trajectories.jsonl`` as they end (module docstring). A folder that
    already holds episodes needs ``resume=True`` (skip them; ``run_info`` -- what defines the run, such as the
    agent spec and seed -- must match the ``run.json`` written when it started) or ``overwrite=True``.
    """
    from cm2_env.backends import build_backends
    from cm2_env.env import CM2ToolUseEnv

    kwargs = dict(env_kwargs or {})
    backends = build_backends(kwargs.pop("simulator", "replay"), kwargs.pop("judge", "rule"),
                              simulator_options=kwargs.pop("simulator_options", None),
                              judge_options=kwargs.pop("judge_options", None))
    kwargs.update(simulator=backends.simulator, judge=backends.judge)
    dialogues = list(dialogues)
    limit = asyncio.Semaphore(max(1, concurrency))
    listed: Counter = Counter()
    jobs = []
    for d, dialogue in enumerate(dialogues):
        first = listed[dialogue.id] * group_size
        listed[dialogue.id] += 1
        jobs.extend((d, first + g) for g in range(group_size))
    results: list[EpisodeResult | None] = [None] * len(jobs)
    writer = RunWriter(out_dir, {**dict(run_info or {}), "seed": seed, "group_size": group_size},
                       resume=resume, overwrite=overwrite) if out_dir is not None else None
    if writer is not None:
        for i, (d, g) in enumerate(jobs):
            results[i] = writer.done.get((dialogues[d].id, g))

    try:
        with progress_reporter("rollouts", len(jobs), enabled=progress) as advance:
            for result in results:
                if result is not None:
                    advance()

            async def run(job_index: int, d: int, g: int) -> None:
                async with limit:
                    env = CM2ToolUseEnv(dataset=[dialogues[d]], **kwargs)
                    try:
                        results[job_index] = await arun_episode(env, agent, dialogues[d].id, g, seed=seed,
                                                                share_verdicts=share_verdicts)
                    finally:
                        env.close()
                if writer is not None:
                    writer.append(results[job_index])
                advance()

            await asyncio.gather(*(run(i, d, g) for i, (d, g) in enumerate(jobs) if results[i] is None))
    finally:
        if writer is not None:
            writer.close()
        await backends.aclose()  # what was built here from spec strings (an LLM judge's client, say)
    finished = [r for r in results if r is not None]
    if writer is not None:
        writer.write_summary({**summarize(finished, dialogues),
                              "llm": llm_usage(agent, kwargs["simulator"], kwargs["judge"])})
    return finished


def llm_usage(*backends: Any) -> dict[str, dict[str, Any]]:
    """Per-role LLM accounting (calls, requests, retries, failures, tokens...) of the clients behind ``backends``
    (an endpoint agent, an LLM simulator, an LLM or hybrid judge); roles without a client are absent."""
    out: dict[str, dict[str, Any]] = {}
    for backend in backends:
        for holder in (backend, getattr(backend, "llm", None)):
            client = getattr(holder, "client", None)
            if client is not None and hasattr(client, "usage"):
                out.update(client.usage())
    return out


def run_rollouts(dialogues: Sequence[Dialogue], agent: Agent, **kwargs: Any) -> list[EpisodeResult]:
    """Synchronous wrapper of :func:`arun_rollouts` (starts its own event loop)."""
    return asyncio.run(arun_rollouts(dialogues, agent, **kwargs))


def summarize(results: Sequence[EpisodeResult], dialogues: Iterable[Dialogue]) -> dict[str, Any]:
    """Mean reward, items passed by focus, early terminations, failures and usage over finished episodes."""
    focus = {(d.id, t, item.id): item.focus_on
             for d in dialogues for t, items in enumerate(d.checklist()) for item in items}
    live = [r for r in results if not r.failed]
    passed, asked = Counter(), Counter()
    for result in live:
        for t, turn_verdicts in _iter_turn_verdicts(result.verdicts):
            for item_id, verdict in turn_verdicts.items():
                kind = focus.get((result.dialogue_id, t, item_id), "unknown")
                asked[kind] += 1
                passed[kind] += bool(verdict.get("passed"))
    usage: Counter = Counter()
    for result in results:
        for key, value in flatten(result.usage, ".").items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                usage[key] += value
    return {
        "episodes": len(results),
        "failed": len(results) - len(live),
        "mean_reward": sum(r.R for r in live) / len(live) if live else None,
        "ended_early": sum(r.ended_early for r in results),
        "truncated": sum(r.truncated for r in results),
        "items_passed_by_focus": {k: {"passed": passed[k], "judged": asked[k],
                                      "rate": passed[k] / asked[k] if asked[k] else None} for k in sorted(asked)},
        "usage": dict(sorted(usage.items())),
    }


def _finished_episode(data: Any) -> EpisodeResult | None:
    """An episode to keep when resuming, or None for a failed one (a dead server, say), which runs again."""
    episode = EpisodeResult.from_json(data)
    return None if episode.failed else episode


class RunWriter:
    """The run folder of :func:`arun_rollouts`: ``run.json`` (what defines the run), ``trajectories.jsonl``
    (one line per finished episode, appended and flushed as each ends) and ``summary.json``.

    Opening a folder that holds episodes needs ``resume`` (the episodes that did not fail are read back into
    :attr:`done`; failed ones and a line cut off by a kill are dropped, to be run again) or ``overwrite``. A record whose text cannot be written as UTF-8 (a lone surrogate) is
    written with ASCII escapes instead: no record is ever lost to its encoding.
    """

    TRAJECTORIES = "trajectories.jsonl"

    def __init__(self, out_dir: str | Path, run_info: Mapping[str, Any], *, resume: bool = False,
                 overwrite: bool = False):
        self.out = Path(out_dir)
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {self.out}: exists and is not a folder. Fix: give a folder path")
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / self.TRAJECTORIES
        info_path = self.out / "run.json"
        self.done: dict[tuple[str, int], EpisodeResult] = {}
        if path.exists() and path.stat().st_size > 0:
            if overwrite:
                path.unlink()
            elif not resume:
                raise ValueError(f"{self.out} already holds episodes ({path.name}). Fix: --resume to finish that "
                                 "run, --overwrite to replace it, or another --out")
            else:
                previous = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
                changed = sorted(k for k in set(previous) | set(run_info)
                                 if k in previous and k in run_info and previous[k] != run_info[k])
                if changed:
                    raise ValueError(f"--resume: {self.out} was started with other settings ({', '.join(changed)}: "
                                     f"{[previous[k] for k in changed]} there, {[run_info[k] for k in changed]} "
                                     "now). Fix: resume with the same settings, or use another --out")
                for episode in resume_jsonl(path, _finished_episode):
                    self.done[(episode.dialogue_id, episode.group_index)] = episode
        info_path.write_text(json.dumps(dict(run_info), indent=2, default=str), encoding="utf-8")
        self._file = path.open("a", encoding="utf-8")

    def append(self, result: EpisodeResult | None) -> None:
        if result is None:
            return
        self._file.write(json_line(result.to_json()))
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        path = self.out / "summary.json"
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(summary, indent=2, ensure_ascii=True), encoding="utf-8")
        temporary.replace(path)
        return path


def json_line(record: Any) -> str:
    """One JSONL line for ``record``: readable UTF-8, or ASCII escapes when its text cannot be encoded (a lone
    surrogate is valid in a Python string and in JSON text, not in UTF-8)."""
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record, ensure_ascii=True)
    return line + "\n"


def _iter_turn_verdicts(verdicts: Any):
    """(turn index, {item_id: verdict dict}) pairs from the env's verdict record (a list per turn or a dict)."""
    if isinstance(verdicts, Mapping):
        for t, per_item in verdicts.items():
            yield int(t), per_item
    elif isinstance(verdicts, list):
        for t, per_item in enumerate(verdicts):
            yield t, per_item
