"""Policies that act in CM2ToolUse-v0, and the concurrent rollout engine.

- :class:`~agents.base.Agent` / :class:`~agents.base.AgentStep`: the contract.
- :class:`~agents.replay.ReplayAgent`: plays the reference actions.
- :class:`~agents.endpoint.EndpointAgent`: any OpenAI-compatible endpoint.
- :class:`~agents.transformers_agent.TransformersAgent`: a local transformers model, batched generation, token
  bookkeeping for training.
- :class:`~agents.vllm_agent.VLLMAgent` / :class:`~agents.vllm_agent.RemoteVLLMAgent`: the same bookkeeping,
  sampled by vLLM in this process or on vLLM servers (docs/scaling.md).
- :class:`~agents.probes.ProbeAgent`: deliberately gaming policies that measure whether a judge can be gamed.
- :func:`make_agent`: build one from a spec string (``cm2_env.specs``: ``replay``, ``probe:KIND``,
  ``openai:URL#model``, ``hf:PATH``, ``MODULE:ATTRIBUTE``); :func:`load_agent` imports a Python one.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Sequence

from agents.base import Agent, AgentStep
from agents.replay import ReplayAgent
from cm2_env.errors import SpecError
from cm2_env.specs import parse


def __getattr__(name: str) -> Any:
    # Heavy or network-capable agents are imported on first use (torch, openai).
    if name == "EndpointAgent":
        from agents.endpoint import EndpointAgent

        return EndpointAgent
    if name == "TransformersAgent":
        from agents.transformers_agent import TransformersAgent

        return TransformersAgent
    raise AttributeError(f"module 'agents' has no attribute {name!r}")


def load_agent(path: str) -> Agent:
    """Import ``module:attribute``: an agent instance, an agent class, or a zero-argument factory of one. Raises
    ``cm2_env.errors.SpecError`` when the import fails or the target is no agent."""
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"policy spec {path!r}: cannot load the agent ({exc}). Fix: put the module on PYTHONPATH "
                        "and check the attribute name") from exc
    if isinstance(target, type) or (not hasattr(target, "act") and callable(target)):
        target = target()  # an agent class or a factory
    if not hasattr(target, "act"):
        raise SpecError(f"policy spec {path!r} is not an agent: it has no async act(messages, tools). Fix: name an "
                        "object with the agents.base.Agent methods, its class, or a factory returning one")
    return target


def make_agent(spec: str, dialogues: Sequence[Any] = (), *, role: str = "policy", **options: Any) -> Agent:
    """An agent from a spec string (``cm2_env.specs``): ``replay``, ``probe:KIND[+calls]`` (agents.probes), an
    endpoint ``openai:URL#model`` (or ``vllm:``/``sglang:``), ``hf:PATH`` (a local transformers model folder with
    a chat-template tokenizer; option ``engine="vllm"`` samples it with a colocated vLLM engine, with
    ``max_model_len`` and ``dtype`` for the engine) or ``MODULE:ATTRIBUTE``. ``role`` is the grammar's role (``"bench"`` for benchmark
    adapters). ``options`` go to the agent's constructor (endpoint and ``hf:`` agents only). A bad spec or option
    raises ``cm2_env.errors.SpecError``."""
    parsed = parse(spec, role)
    name = "benchmark policy" if role == "bench" else role
    if options and parsed.kind not in ("endpoint", "hf"):
        raise SpecError(f"{name} spec {parsed.text!r} takes no options (got {', '.join(sorted(options))}). Fix: "
                        "drop them; only endpoint and hf: agents are configured by options")
    if parsed.kind == "replay":
        return ReplayAgent(dialogues)
    if parsed.kind == "probe":
        from agents.probes import ProbeAgent

        kind, _, extra = parsed.value.partition("+")
        if extra not in ("", "calls"):
            raise SpecError(f"unknown probe option {extra!r} in {parsed.text!r}. Fix: use probe:KIND or "
                            "probe:KIND+calls")
        return ProbeAgent(dialogues, kind, replay_calls=extra == "calls")  # checks KIND
    if parsed.kind == "endpoint":
        from agents.endpoint import EndpointAgent

        return EndpointAgent(parsed.value, **options)
    if parsed.kind == "hf":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from agents.transformers_agent import TransformersAgent

        if not (Path(parsed.value) / "config.json").is_file():
            raise SpecError(f"{name} spec {parsed.text!r}: {parsed.value!r} is not a local model folder (no "
                            "config.json there). Fix: give the folder of a saved model, e.g. "
                            "hf:runs/tiny-cpu/grpo/final (cm2 never downloads models)")
        engine = options.pop("engine", "transformers")
        if engine == "vllm":  # the same policy sampled by a colocated vLLM engine (agents.vllm_agent)
            from agents.vllm_agent import VLLMAgent, VLLMEngine

            vllm_engine = VLLMEngine(parsed.value, max_model_len=int(options.pop("max_model_len", 8192)),
                                     dtype=str(options.pop("dtype", "auto")))
            return VLLMAgent(vllm_engine, AutoTokenizer.from_pretrained(parsed.value), **options)
        if engine != "transformers":
            raise SpecError(f"{name} spec {parsed.text!r}: unknown engine {engine!r}. Fix: engine='transformers' "
                            "(default) or engine='vllm'")
        return TransformersAgent(AutoModelForCausalLM.from_pretrained(parsed.value),
                                 AutoTokenizer.from_pretrained(parsed.value), **options)
    return load_agent(parsed.value)


__all__ = ["Agent", "AgentStep", "ReplayAgent", "EndpointAgent", "TransformersAgent", "load_agent", "make_agent"]
