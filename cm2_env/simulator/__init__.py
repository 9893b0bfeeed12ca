"""Tool simulators: answer the agent's tool calls during an episode (docs/method.md, "Tools: the hybrid simulator").

``make_simulator(spec, **options)`` builds one from a spec:

- ``"replay"``: replay of recorded calls + schema validation, no LLM (a valid call without a recorded response
  gets the deterministic ``no_simulator`` error);
- ``"openai:URL#model"`` (any ``cm2_env.llm`` spec): the same with an LLM fallback;
- a :class:`ToolSimulator` object: returned as is.

Options: ``fewshot="prefix"|"all"``, ``lenient=False``, ``sampling={...}``, ``attempts=2``,
``max_example_chars=2000``, ``llm_options={...}`` (passed to ``cm2_env.llm.make_client``), ``client=`` (an
existing ChatClient, used instead of building one from the endpoint spec; with ``"replay"`` it adds the LLM
fallback).
"""

from __future__ import annotations

from typing import Any

from cm2_env.simulator.base import INVALID_CALL_SOURCES, SimulatorEpisode, ToolResult, ToolSimulator
from cm2_env.simulator.hybrid import HybridEpisode, HybridToolSimulator, RecordedCall, recorded_calls
from cm2_env.specs import check_options, parse

__all__ = [
    "INVALID_CALL_SOURCES", "SimulatorEpisode", "ToolResult", "ToolSimulator",
    "HybridEpisode", "HybridToolSimulator", "RecordedCall", "recorded_calls", "make_simulator",
]


_OPTIONS = ("fewshot", "lenient", "sampling", "attempts", "max_example_chars", "llm_options", "client")


def make_simulator(spec: str | ToolSimulator = "replay", **options: Any) -> ToolSimulator:
    """A simulator from a spec string (``cm2_env.specs``, role ``simulator``) or object (see the module
    docstring). A bad spec or option raises ``cm2_env.errors.SpecError``."""
    if isinstance(spec, ToolSimulator):
        return spec
    parsed = parse(spec, "simulator")
    check_options("simulator", options, _OPTIONS)
    llm_options = dict(options.pop("llm_options", None) or {})
    client = options.pop("client", None)
    if parsed.kind == "replay":
        return HybridToolSimulator(client, **options)
    owns_client = client is None
    if client is None:
        from cm2_env.llm import make_client

        client = make_client(parsed.value, role="simulator", **llm_options)
    return HybridToolSimulator(client, owns_client=owns_client, **options)
