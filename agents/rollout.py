"""The concurrent rollout engine: groups of G episodes per dialogue, all in one event loop.

Every episode is its own :class:`~cm2_env.env.CM2ToolUseEnv` (sharing one simulator and one judge object), driven
through ``areset``/``astep``; a semaphore bounds how many episodes are in flight. A batch therefore costs about as
long as its longest chain of sequential LLM calls (DESIGN.md, "Concurrency"). Results can be written to a run
directory as JSONL trajectories plus a JSON summary.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from agents.base import AGENT_CONTEXT_KEYS, Agent, AgentStep, ContextLimitExceeded
from agents.sampling import sampling_seed
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
    ``context["sampling_seed"] = sampling_seed(seed, dialogue_id, group_index, i)`` (:mod:`agents.sampling`), so
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
) -> list[EpisodeResult]:
    """Run ``group_size`` episodes of every dialogue concurrently; results are ordered by (dialogue, group index).

    ``env_kwargs`` go to :class:`~cm2_env.env.CM2ToolUseEnv`; a simulator or judge given as a spec string is built
    once here and shared by all episodes. Episode ``(d, g)`` runs with the rollout seed ``seed`` (see
    :func:`arun_episode`): its resets and sampling depend on ``(seed, dialogue id, g)``, not on the order in which
    episodes finish, so the results (ordered by dialogue, then group index) are the same at any concurrency.
    A dialogue listed twice forms one larger group: its second listing has group indices ``group_size ..
    2 * group_size - 1``, so no two episodes share a sampling key.
    """
    from cm2_env.env import CM2ToolUseEnv
    from cm2_env.judge import make_judge
    from cm2_env.simulator import make_simulator

    kwargs = dict(env_kwargs or {})
    kwargs["simulator"] = make_simulator(kwargs.get("simulator", "replay"))
    kwargs["judge"] = make_judge(kwargs.get("judge", "rule"))
    dialogues = list(dialogues)
    limit = asyncio.Semaphore(max(1, concurrency))
    listed: Counter = Counter()
    jobs = []
    for d, dialogue in enumerate(dialogues):
        first = listed[dialogue.id] * group_size
        listed[dialogue.id] += 1
        jobs.extend((d, first + g) for g in range(group_size))
    results: list[EpisodeResult | None] = [None] * len(jobs)

    with _progress(progress, len(jobs)) as advance:
        async def run(job_index: int, d: int, g: int) -> None:
            async with limit:
                env = CM2ToolUseEnv(dataset=[dialogues[d]], **kwargs)
                try:
                    results[job_index] = await arun_episode(env, agent, dialogues[d].id, g, seed=seed,
                                                            share_verdicts=share_verdicts)
                finally:
                    env.close()
            advance()

        await asyncio.gather(*(run(i, d, g) for i, (d, g) in enumerate(jobs)))

    finished = [r for r in results if r is not None]
    if out_dir is not None:
        write_run(out_dir, finished, dialogues)
    return finished


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
        for key, value in _flatten(result.usage):
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


def write_run(out_dir: str | Path, results: Sequence[EpisodeResult], dialogues: Iterable[Dialogue]) -> Path:
    """Write ``trajectories.jsonl`` and ``summary.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "trajectories.jsonl").open("w", encoding="utf-8") as f:
        for result in results:
            f.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
    (out / "summary.json").write_text(json.dumps(summarize(results, dialogues), indent=2))
    return out


def _iter_turn_verdicts(verdicts: Any):
    """(turn index, {item_id: verdict dict}) pairs from the env's verdict record (a list per turn or a dict)."""
    if isinstance(verdicts, Mapping):
        for t, per_item in verdicts.items():
            yield int(t), per_item
    elif isinstance(verdicts, list):
        for t, per_item in enumerate(verdicts):
            yield t, per_item


def _flatten(mapping: Mapping[str, Any], prefix: str = ""):
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, name + ".")
        else:
            yield name, value


class _progress:
    """A rich progress bar over episodes, or a no-op when disabled."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("rollouts"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             transient=False)
        self._bar.start()
        task = self._bar.add_task("episodes", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self._bar.stop()
