"""Policies that act in CM2ToolUse-v0, and the concurrent rollout engine.

- :class:`~agents.base.Agent` / :class:`~agents.base.AgentStep`: the contract.
- :class:`~agents.replay.ReplayAgent`: plays the reference actions.
- :class:`~agents.endpoint.EndpointAgent`: any OpenAI-compatible endpoint.
- :class:`~agents.transformers_agent.TransformersAgent`: a local transformers model, batched generation, token
  bookkeeping for training.
- :func:`make_agent`: build one from a spec string (``replay``, ``openai:URL#model``, ``hf:PATH``).
"""

from __future__ import annotations

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
    """An agent from a spec: ``replay``, an endpoint spec ``openai:URL#model``, or ``hf:PATH`` (a local
    transformers model folder with a chat-template tokenizer). ``options`` go to the agent's constructor."""
    if spec == "replay":
        return ReplayAgent(dialogues)
    if spec.startswith("openai:"):
        from agents.endpoint import EndpointAgent

        return EndpointAgent(spec, **options)
    if spec.startswith("hf:"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from agents.transformers_agent import TransformersAgent

        path = spec[len("hf:"):]
        return TransformersAgent(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                                 **options)
    raise ValueError(f"unknown agent spec {spec!r}: use 'replay', 'openai:URL#model' or 'hf:PATH'")


__all__ = ["Agent", "AgentStep", "ReplayAgent", "EndpointAgent", "TransformersAgent", "make_agent"]
