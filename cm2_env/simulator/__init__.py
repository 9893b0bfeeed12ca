"""Tool simulators: answer the agent's tool calls during an episode (docs/method.md, "Tools: the hybrid simulator").

``make_simulator(spec, **options)`` builds one from a spec:

- ``"replay"``: replay of recorded calls + schema validation, no LLM (a valid call without a recorded response
  gets the deterministic ``no_simulator`` error);
- ``"openai:URL#model"`` (any ``cm2_env.llm`` spec): the same with an LLM fallback;
- a :class:`ToolSimulator` object: returned as is.

Options: ``fewshot="prefix"|"all"``, ``lenient=False``, ``sampling={...}``, ``attempts=2``,
``max_example_chars=2000``, ``llm_options={...}`` (passed to ``cm2_env.llm.make_client``), ``client=`` (an
existing ChatClient instead of a spec).
"""

from __future__ import annotations

from typing import Any

from cm2_env.llm.spec import looks_like_llm_spec
from cm2_env.simulator.base import INVALID_CALL_SOURCES, SimulatorEpisode, ToolResult, ToolSimulator
from cm2_env.simulator.hybrid import HybridEpisode, HybridToolSimulator, RecordedCall, recorded_calls

__all__ = [
    "INVALID_CALL_SOURCES", "SimulatorEpisode", "ToolResult", "ToolSimulator",
    "HybridEpisode", "HybridToolSimulator", "RecordedCall", "recorded_calls", "make_simulator",
]


SIMULATOR_CHOICES = "'replay' or an LLM spec such as 'openai:http://HOST:PORT/v1#MODEL'"


def make_simulator(spec: Any = "replay", **options: Any) -> ToolSimulator:
    """A simulator from a spec string or object (see the module docstring)."""
    if not isinstance(spec, str):
        if isinstance(spec, ToolSimulator):
            return spec
        raise TypeError(f"simulator must be {SIMULATOR_CHOICES} or a ToolSimulator object, got {spec!r}")
    llm_options = dict(options.pop("llm_options", None) or {})
    client = options.pop("client", None)
    if spec.strip() == "replay":
        return HybridToolSimulator(client, **options)
    if client is None and not looks_like_llm_spec(spec):
        raise ValueError(f"unknown simulator {spec!r}; choose {SIMULATOR_CHOICES}")
    owns_client = client is None
    if client is None:
        from cm2_env.llm import make_client

        client = make_client(spec, role="simulator", **llm_options)
    return HybridToolSimulator(client, owns_client=owns_client, **options)
