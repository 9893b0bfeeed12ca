"""Policies that act in CM2ToolUse-v0, and the concurrent rollout engine.

- :class:`~agents.base.Agent` / :class:`~agents.base.AgentStep`: the contract.
- :class:`~agents.replay.ReplayAgent`: plays the reference actions.
- :class:`~agents.endpoint.EndpointAgent`: any OpenAI-compatible endpoint.
- :class:`~agents.transformers_agent.TransformersAgent`: a local transformers model, batched generation, token
  bookkeeping for training.
- :class:`~agents.probes.ProbeAgent`: deliberately gaming policies that measure whether a judge can be gamed.
- :func:`make_agent`: build one from a spec string (``replay``, ``probe:KIND``, ``openai:URL#model``, ``hf:PATH``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from agents.base import Agent, AgentStep
from agents.replay import ReplayAgent


def __getattr__(name: str) -> Any:
    # Heavy or network-capable agents are imported on first use (torch, openai).
    if name == "EndpointAgent":
        from agents.endpoint import EndpointAgent

        return EndpointAgent
    if name == "TransformersAgent":
        from agents.transformers_agent import TransformersAgent

        return TransformersAgent
    raise AttributeError(f"module 'agents' has no attribute {name!r}")


def make_agent(spec: str, dialogues: Sequence[Any] = (), **options: Any) -> Agent:
    """An agent from a spec: ``replay``, ``probe:KIND`` or ``probe:KIND+calls`` (agents.probes), an endpoint spec
    ``openai:URL#model``, or ``hf:PATH`` (a local transformers model folder with a chat-template tokenizer).
    ``options`` go to the agent's constructor."""
    if spec == "replay":
        return ReplayAgent(dialogues)
    if spec.startswith("probe:"):
        from agents.probes import ProbeAgent

        kind, _, extra = spec[len("probe:"):].partition("+")
        if extra not in ("", "calls"):
            raise ValueError(f"unknown probe option {extra!r} in {spec!r}: use probe:KIND or probe:KIND+calls")
        return ProbeAgent(dialogues, kind, replay_calls=extra == "calls")
    if spec.startswith("openai:"):
        from agents.endpoint import EndpointAgent

        return EndpointAgent(spec, **options)
    if spec.startswith("hf:"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from agents.transformers_agent import TransformersAgent

        path = spec[len("hf:"):]
        if not (Path(path) / "config.json").is_file():
            raise ValueError(f"agent {spec!r}: {path!r} is not a local model folder (no config.json there). Fix: "
                             "give the folder of a saved model, e.g. hf:runs/tiny-cpu/grpo/final (cm2 never "
                             "downloads models)")
        return TransformersAgent(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                                 **options)
    raise ValueError(f"unknown agent spec {spec!r}: use 'replay', 'probe:KIND', 'openai:URL#model' or 'hf:PATH'")


__all__ = ["Agent", "AgentStep", "ReplayAgent", "EndpointAgent", "TransformersAgent", "make_agent"]
