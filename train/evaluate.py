"""Measure a policy's mean checklist reward on dialogues (before/after training).

Contract of :func:`measure_reward`: run ``samples`` episodes per dialogue in CM2ToolUse-v0 with the config's
environment settings (simulator, judge, limits, L normaliser) and a :class:`agents.TransformersAgent` that
decodes greedily (``temperature == 0``) or samples with a fixed seed; return the mean trajectory reward R over
the episodes that did not fail, with the items-passed rates by focus and the failure count. The same model,
dialogues, settings and seed give the same number.
"""

from __future__ import annotations

from typing import Any, Sequence

from train.config import GRPOConfig
from train.grpo import collect_rollouts
from train.rollout_engine import AgentFactory, transformers_agent


def measure_reward(model: Any, tokenizer: Any, dialogues: Sequence[Any], config: GRPOConfig, *, seed: int = 0,
                   samples: int | None = None, temperature: float | None = None,
                   make_agent: AgentFactory = transformers_agent) -> dict[str, Any]:
    """Mean checklist reward of ``model`` on ``dialogues`` (see the module docstring); ``make_agent`` builds the
    policy that samples (:data:`train.rollout_engine.AgentFactory`)."""
    from agents.rollout import summarize

    samples = samples or config.eval_samples
    temperature = config.eval_temperature if temperature is None else temperature
    episodes = collect_rollouts(model, tokenizer, dialogues, config, seed=seed, group_size=samples,
                                temperature=temperature, max_turns=config.eval_max_turns or None,
                                make_agent=make_agent)
    summary = summarize(episodes, dialogues)
    per_dialogue: dict[str, list[float]] = {}
    for episode in episodes:
        if not episode.failed:
            per_dialogue.setdefault(episode.dialogue_id, []).append(episode.R)
    return {
        "mean_reward": summary["mean_reward"] if summary["mean_reward"] is not None else 0.0,
        "episodes": summary["episodes"],
        "failed": summary["failed"],
        "ended_early": summary["ended_early"],
        "items_passed": {k: v["rate"] for k, v in summary["items_passed_by_focus"].items()},
        "per_dialogue": {k: sum(v) / len(v) for k, v in per_dialogue.items()},
        "actions": sum(len(e.steps) for e in episodes),
        "greedy": temperature == 0,
        "seed": seed,
    }
