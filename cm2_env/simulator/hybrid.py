"""The hybrid tool simulator (docs/method.md, "Tools: the hybrid simulator").

Contract: :class:`HybridToolSimulator` opens one :class:`HybridEpisode` per episode. ``await
episode.execute(name, arguments, turn=t)`` answers one call, in this order:

1. **replay** - (name, canonical JSON of the arguments) equals a recorded call of the reference dialogue that is
   at or before the agent's position (below): the recorded response. With ``lenient=True`` numbers equal numeric
   strings and surrounding whitespace is ignored.
2. **unknown_tool** - the dialogue has no tool of that name: an error response listing the available tools.
3. **schema_error** - the arguments violate the tool's JSON schema: an error response saying what is wrong.
4. **llm** - an LLM (``client``) simulates the tool from few-shot examples: the dialogue's recorded calls of the
   recordings before the agent's position (``fewshot="prefix"``, default: no future leakage) or of all turns
   (``fewshot="all"``, as released), plus the calls this episode already simulated. The model answers
   ``{"analysis": ..., "execution_result": ...}``; the tool response is ``execution_result``. A simulated
   response is cached per episode, so the same call gets the same answer.
   Without a client the call gets the deterministic **no_simulator** error. If the model still fails after its
   attempts (transport errors after the client's retries, or no parsable result) the source is **failed**.

The agent's position: in turn t it has *reached* the reference actions of turn t that it replayed, and the one
after the last of them (initially the turn's first action). Replay may use the recordings of earlier turns and of
the reached actions of turn t; a call recorded several times gets the latest of those. Few-shot examples show the
recordings of earlier turns and of the actions of turn t that the agent already replayed. So no replayed response
or example ever shows state that the reference only creates later: a repeated read in turn 0 cannot reveal what
turn 2 writes. A call recorded only later goes to the LLM (or gets the no-simulator error).

``execute`` never raises. Error responses are JSON objects ``{"error": "..."}``; whether an invalid call ends the
episode (released behaviour, policy ``terminate``) or is answered and the episode goes on is the environment's
``invalid_call_policy`` (the sources in ``INVALID_CALL_SOURCES`` are the invalid ones).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from string import Template
from typing import Any, Literal, get_args

from cm2_env.data.models import Dialogue
from cm2_env.data.turns import split_turns
from cm2_env.reward.items import check_choice
from cm2_env.simulator.base import ToolResult
from cm2_env.simulator.schema import canonical_arguments, schema_problems
from cm2_env.text import package_prompt, shorten

FewShot = Literal["prefix", "all"]

NO_SIMULATOR_MESSAGE = (
    "no recorded response exists for this call and no tool simulator is configured "
    "(only calls identical to the reference dialogue's calls can be answered)"
)
#: The released sampling settings of the simulator LLM.
DEFAULT_SAMPLING: dict[str, Any] = {"temperature": 0.6, "top_p": 0.8}


def prompt_template(name: str) -> Template:
    """A prompt file of this package (``prompts/NAME.txt``, ``$field`` placeholders)."""
    return package_prompt("cm2_env.simulator", name)


@dataclass(frozen=True)
class RecordedCall:
    """One call of the reference dialogue and its recorded response; ``order`` is its position in the dialogue,
    ``action`` the 0-based index of its reference action inside the turn."""

    turn: int
    order: int
    name: str
    arguments: Any
    response: str
    action: int = 0


def recorded_calls(dialogue: Dialogue) -> list[RecordedCall]:
    """Every (call, response) pair of the reference, in dialogue order. Responses pair with calls by
    ``tool_call_id`` and fall back to position, so data without ids still pairs up."""
    calls: list[RecordedCall] = []
    for turn in split_turns(dialogue.messages):
        for action in turn.actions:
            responses = list(action.tool_responses)
            by_id = {r.tool_call_id: r for r in responses if getattr(r, "tool_call_id", None)}
            for position, call in enumerate(action.assistant.calls):
                response = by_id.get(call.id) if call.id else None
                if response is None and position < len(responses):
                    response = responses[position]
                if response is None:
                    continue
                arguments = call.function.parsed_arguments()
                calls.append(RecordedCall(turn.index, len(calls), call.function.name,
                                          call.function.arguments if arguments is None else arguments,
                                          response.text, action.index - 1))
    return calls


def error_content(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)


class HybridToolSimulator:
    """Replay + schema validation + optional LLM fallback. Holds the (shared) LLM client; see the module docstring.

    client: a ``cm2_env.llm.ChatClient`` or None (replay only). fewshot: "prefix" (default) or "all".
    lenient: lenient replay matching. sampling: chat options for the LLM (default: released temperature 0.6,
    top_p 0.8). attempts: LLM answers tried per call when the answer has no parsable result (released: 1).
    max_example_chars: recorded responses longer than this are cut in the few-shot prompt.
    """

    def __init__(self, client: Any = None, *, fewshot: FewShot = "prefix", lenient: bool = False,
                 sampling: dict[str, Any] | None = None, attempts: int = 2, max_example_chars: int = 2000,
                 owns_client: bool = False) -> None:
        check_choice("fewshot", fewshot, get_args(FewShot))
        self.client = client
        self.owns_client = owns_client  # built for this simulator (make_simulator): closed by aclose()
        self.fewshot: FewShot = fewshot
        self.lenient = lenient
        self.sampling = {**DEFAULT_SAMPLING, **(sampling or {})}
        self.attempts = max(1, int(attempts))
        self.max_example_chars = max_example_chars

    def start_episode(self, dialogue: Dialogue) -> "HybridEpisode":
        return HybridEpisode(self, dialogue)

    async def aclose(self) -> None:
        """Close the LLM client if this simulator owns it (a client passed in belongs to the caller)."""
        if self.owns_client and hasattr(self.client, "aclose"):
            await self.client.aclose()


class HybridEpisode:
    """Per-episode state: the recorded calls, which of them were replayed, the LLM cache and usage counters."""

    def __init__(self, simulator: HybridToolSimulator, dialogue: Dialogue) -> None:
        self.simulator = simulator
        self.dialogue = dialogue
        self.recorded = recorded_calls(dialogue)
        self._by_key: dict[tuple[str, str], list[RecordedCall]] = {}
        for call in self.recorded:
            self._by_key.setdefault(self._key(call.name, call.arguments), []).append(call)
        self._reached: dict[int, int] = {}  # turn -> reference actions of that turn the agent replayed up to
        self._cache: dict[tuple[str, str], asyncio.Future[ToolResult]] = {}
        self._simulated: list[tuple[str, Any, str]] = []  # this episode's LLM answers, few-shot examples later
        self._counts: Counter[str] = Counter()

    def _key(self, name: str, arguments: Any) -> tuple[str, str]:
        return name, canonical_arguments(arguments, lenient=self.simulator.lenient)

    # -- the contract ----------------------------------------------------------------------------------------

    async def execute(self, name: str, arguments: Any, *, turn: int) -> ToolResult:
        result = await self._execute(name, arguments, turn)
        self._counts[result.source] += 1
        return result

    def usage(self) -> dict[str, int]:
        """Calls per source, cache hits, LLM calls, answers that broke the output contract (``bad_answers``) and
        tokens of this episode."""
        keys = ("replay", "llm", "schema_error", "unknown_tool", "no_simulator", "failed",
                "cache_hits", "llm_calls", "bad_answers", "prompt_tokens", "completion_tokens")
        return {key: int(self._counts.get(key, 0)) for key in keys}

    # -- the steps -------------------------------------------------------------------------------------------

    async def _execute(self, name: str, arguments: Any, turn: int) -> ToolResult:
        name = name if isinstance(name, str) else str(name)
        recorded = self._replay(name, arguments, turn)
        if recorded is not None:
            return ToolResult(recorded.response, "replay")
        tool = self.dialogue.tool(name)
        if tool is None:
            available = ", ".join(self.dialogue.tool_names) or "none"
            return ToolResult(error_content(f"unknown tool {name!r}; available tools: {available}"),
                              "unknown_tool", "unknown_tool")
        problems = schema_problems(arguments, tool.function.parameters)
        if problems:
            return ToolResult(error_content(f"invalid arguments for {name}: " + "; ".join(problems)),
                              "schema_error", "schema_error")
        if self.simulator.client is None:
            return ToolResult(error_content(NO_SIMULATOR_MESSAGE), "no_simulator", "no_simulator")
        return await self._simulate_cached(name, arguments, turn)

    def _visible(self, call: RecordedCall, turn: int, include_next: bool) -> bool:
        """Whether ``call`` is at or before the agent's position in ``turn`` (module docstring)."""
        if call.turn != turn:
            return call.turn < turn
        reached = self._reached.get(turn, 0)
        return call.action < reached or (include_next and call.action == reached)

    def _replay(self, name: str, arguments: Any, turn: int) -> RecordedCall | None:
        """The recorded call to replay, if any: the latest identical recording at or before the agent's position
        (the state as it stands there); replaying a call of the current turn advances the position past it."""
        matches = [m for m in self._by_key.get(self._key(name, arguments), []) if self._visible(m, turn, True)]
        if not matches:
            return None
        chosen = max(matches, key=lambda m: m.order)
        if chosen.turn == turn:
            self._reached[turn] = max(self._reached.get(turn, 0), chosen.action + 1)
        return chosen

    async def _simulate_cached(self, name: str, arguments: Any, turn: int) -> ToolResult:
        key = self._key(name, arguments)
        future = self._cache.get(key)
        if future is not None:
            self._counts["cache_hits"] += 1
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self._cache[key] = future
        try:
            result = await self._simulate(name, arguments, turn)
        except asyncio.CancelledError:  # waiters see the cancellation; the next identical call starts afresh
            self._cache.pop(key, None)
            future.cancel()
            raise
        except Exception as exc:  # execute never raises: an unexpected client error is a failed result
            result = ToolResult(error_content(f"tool simulator failed: {type(exc).__name__}: {exc}"),
                                "failed", "simulator_failed")
        if result.source != "llm":
            self._cache.pop(key, None)  # a failure is not an answer: the next identical call tries again
        else:
            self._simulated.append((name, arguments, result.content))
        future.set_result(result)
        return result

    async def _simulate(self, name: str, arguments: Any, turn: int) -> ToolResult:
        from cm2_env.llm import LLMError, extract_json  # the LLM layer is only needed on this path

        messages = self.prompt(name, arguments, turn)
        reason = "no parsable execution_result"
        for _ in range(self.simulator.attempts):
            try:
                reply = await self.simulator.client.chat(messages, **self.simulator.sampling)
            except LLMError as exc:
                reason = f"simulator LLM call failed: {exc}"
                break
            self._counts["llm_calls"] += 1
            usage = getattr(reply, "usage", None) or {}
            self._counts["prompt_tokens"] += int(usage.get("prompt_tokens", 0) or 0)
            self._counts["completion_tokens"] += int(usage.get("completion_tokens", 0) or 0)
            result = execution_result(extract_json(reply.text or ""))
            if result is not None:
                return ToolResult(json.dumps(result, ensure_ascii=False), "llm")
            self._counts["bad_answers"] += 1
            reason = "the answer broke the contract: no JSON object with execution_result"
        return ToolResult(error_content(f"tool simulator failed: {reason}"), "failed", "simulator_failed")

    # -- the prompt ------------------------------------------------------------------------------------------

    def fewshot_examples(self, turn: int) -> list[tuple[str, Any, str]]:
        """(name, arguments, response) examples for a call made in ``turn``: the recordings before the agent's
        position (``fewshot="prefix"``) or every recording (``"all"``), then this episode's simulated calls."""
        recorded = [c for c in self.recorded if self.simulator.fewshot == "all" or self._visible(c, turn, False)]
        return [(c.name, c.arguments, c.response) for c in recorded] + list(self._simulated)

    def prompt(self, name: str, arguments: Any, turn: int) -> list[dict[str, str]]:
        """The chat messages asking the LLM to execute ``name(arguments)``."""
        limit = self.simulator.max_example_chars
        example = prompt_template("example")
        shown = [
            example.substitute(index=i, name=n, arguments=_dumps(a), result=shorten(r, limit))
            for i, (n, a, r) in enumerate(self.fewshot_examples(turn), start=1)
        ]
        tool = self.dialogue.tool(name)
        function = tool.function if tool is not None else None
        user = prompt_template("user").substitute(
            examples="\n".join(shown) if shown else "(no examples recorded yet)",
            name=name,
            description=function.description if function else "",
            schema=_dumps(function.parameters if function else {}),
            arguments=_dumps(arguments),
        )
        return [{"role": "system", "content": prompt_template("system").template.strip()},
                {"role": "user", "content": user}]


def execution_result(parsed: Any) -> Any:
    """The tool response inside a parsed simulator answer, or None when the answer breaks the contract.

    The contract is a JSON object with ``execution_result`` (and ``analysis``): ``{"execution_result": X}`` gives X
    (an object or array; a scalar is wrapped as ``{"result": X}``; a string holding JSON is decoded). Anything
    else -- another object (say, the arguments of a few-shot example, when a server echoes its prompt), a bare
    list, a null result -- is None: the simulator asks again, then fails the call.
    """
    if not isinstance(parsed, dict):
        return None
    if "execution_result" in parsed:
        value = parsed["execution_result"]
        if isinstance(value, str):  # some models put the JSON result in a string
            try:
                value = json.loads(value)
            except ValueError:
                pass
        if value is None:
            return None
        return value if isinstance(value, (dict, list)) else {"result": value}
    return None


def _dumps(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
