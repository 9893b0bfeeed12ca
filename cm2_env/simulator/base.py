"""The tool-simulator contract.

A simulator answers the agent's tool calls during an episode. It is created once (it may hold an LLM client)
and opens one :class:`SimulatorEpisode` per episode with :meth:`ToolSimulator.start_episode`; the episode object
holds per-episode state (the reference dialogue, the cache that makes the same call get the same answer, usage
counters). ``execute`` never raises on bad input or backend failure: it returns a :class:`ToolResult` whose
``source`` says what happened, and the environment decides (``invalid_call_policy``) whether an error response
continues the episode or terminates it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from cm2_env.data.models import Dialogue

ToolResultSource = Literal["replay", "llm", "schema_error", "unknown_tool", "no_simulator", "failed"]

#: Sources that mean the call itself was invalid (the released code ended the episode on these).
INVALID_CALL_SOURCES: frozenset[str] = frozenset({"schema_error", "unknown_tool"})


@dataclass(frozen=True)
class ToolResult:
    """The answer to one tool call.

    content: the tool message content the agent sees (a JSON string for replayed and simulated results; an
        error description for errors).
    source: replay (recorded response), llm (simulated), schema_error, unknown_tool, no_simulator (valid call,
        no recorded response, no simulator LLM configured), failed (the simulator LLM failed after retries:
        the episode is marked failed and excluded from training statistics).
    error: a short machine-readable reason for error sources, else None.
    """

    content: str
    source: ToolResultSource
    error: str | None = None


@runtime_checkable
class SimulatorEpisode(Protocol):
    """Per-episode simulator state."""

    async def execute(self, name: str, arguments: Any, *, turn: int) -> ToolResult:
        """Answer one call. ``arguments`` is the decoded JSON (normally a dict) or the raw string when it was not
        valid JSON; ``turn`` is the 0-based reference turn the episode is in (it bounds the few-shot examples)."""
        ...

    def usage(self) -> dict[str, int]:
        """Counts per result source and LLM calls made in this episode (no timings)."""
        ...


@runtime_checkable
class ToolSimulator(Protocol):
    """Factory of per-episode simulator state."""

    def start_episode(self, dialogue: Dialogue) -> SimulatorEpisode: ...
