"""Policies the BFCL worker can plug into BFCL's handler loop: ``oracle``, ``noop``, an endpoint, an agent.

Contract: a policy answers one ``PolicyRequest`` (the chat history BFCL built, the OpenAI tools of the entry,
plus which entry, turn and step this is) with one assistant message dict: ``{"content": str | None,
"tool_calls": [OpenAI tool-call dicts], "usage": {...}}``. ``respond`` is called from BFCL's worker threads;
async policies run on one shared event loop (``AsyncBridge``), so an agent or client may keep its own state
(semaphores, caches) across entries.

- ``oracle`` replays BFCL's ground truth: in function-calling mode each turn's Python call strings are turned
  into structured tool calls with the ``ast`` module's literal parsing (never ``eval``); in prompting mode the
  same calls are sent as BFCL's ``[f(a=1), g(b=2)]`` text. Web-search entries get the expected answer as text.
- ``noop`` answers every request with text and no calls.
- any other spec of the project's grammar (``cm2_env.specs``, role ``bench``): an endpoint (through
  ``cm2_env.llm``, the only LLM client), ``hf:PATH`` or ``module:attribute``, built by ``agents.make_agent``.

This module is imported by the worker subprocess and by tests of the pure parts; it imports ``bfcl_eval`` only
inside ``OraclePolicy`` (the worker has set ``BFCL_PROJECT_ROOT`` by then).
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any, Protocol

from benchmarks.runs import AsyncBridge


@dataclass
class PolicyRequest:
    """One request of BFCL's loop. ``turn`` counts user turns from 0; ``step`` counts requests within the turn."""

    messages: list[dict]
    tools: list[dict]
    entry: dict
    turn: int
    step: int
    fc_mode: bool
    temperature: float


class Policy(Protocol):
    def respond(self, request: PolicyRequest) -> dict: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- ground-truth call strings


@dataclass(frozen=True)
class PythonCall:
    """A call string such as ``mv(source='a', destination='b')`` split into name and literal arguments."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def parse_python_call(text: str) -> PythonCall | None:
    """Parse ``name(literal, key=literal, ...)``; ``None`` for anything else (never raises, never evaluates)."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            return None
        if any(keyword.arg is None for keyword in node.keywords):  # **kwargs
            return None
        args = tuple(ast.literal_eval(arg) for arg in node.args)
        kwargs = {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords}
        return PythonCall(node.func.id, args, kwargs)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None


def call_arguments(call: PythonCall, functions: list[dict]) -> dict[str, Any] | None:
    """Name the positional arguments of ``call`` after its function doc's parameter order; ``None`` if unknown."""
    if not call.args:
        return dict(call.kwargs)
    doc = next((function for function in functions if function.get("name") == call.name), None)
    if doc is None:
        return None
    names = list(doc.get("parameters", {}).get("properties", {}))
    if len(call.args) > len(names):
        return None
    return {**dict(zip(names, call.args)), **call.kwargs}


def keyword_calls(calls: list[str], functions: list[dict]) -> list[tuple[str, dict[str, Any]]] | None:
    """``(name, arguments)`` for BFCL's ground-truth call strings; ``None`` if one cannot be parsed."""
    parsed = []
    for text in calls:
        call = parse_python_call(text)
        arguments = call_arguments(call, functions) if call else None
        if call is None or arguments is None:
            return None
        parsed.append((call.name, arguments))
    return parsed


def tool_calls_message(calls: list[tuple[str, dict[str, Any]]]) -> dict:
    """Function-calling mode: the calls as OpenAI tool calls."""
    return {"content": None, "tool_calls": [
        {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
        for index, (name, arguments) in enumerate(calls)
    ]}


def python_calls_message(calls: list[tuple[str, dict[str, Any]]]) -> dict:
    """Prompting mode: BFCL's ``[f(a=1), g(b='x')]`` text. Keywords only: BFCL's text decoder drops positionals."""
    rendered = [f"{name}({', '.join(f'{key}={value!r}' for key, value in arguments.items())})"
                for name, arguments in calls]
    return {"content": "[" + ", ".join(rendered) + "]"}


# --------------------------------------------------------------------------- built-in policies


FINAL_TEXT = "Done."


class OraclePolicy:
    """Replays the ground truth: all of a turn's calls at step 0, then a final text answer."""

    def __init__(self, categories: list[str]) -> None:
        from bfcl_eval.utils import load_dataset_entry, load_ground_truth_entry

        # Aligned by index, as BFCL's evaluate_task does: web-search answers are keyed "web_search_<i>" while
        # the entries are "web_search_base_<i>" / "web_search_no_snippet_<i>".
        self._ground_truth = {}
        for category in categories:
            entries = load_dataset_entry(category, include_prereq=False, include_language_specific_hint=False)
            answers = load_ground_truth_entry(category)
            self._ground_truth.update({entry["id"]: answer["ground_truth"] for entry, answer in zip(entries, answers)})

    def respond(self, request: PolicyRequest) -> dict:
        entry = request.entry
        truth = self._ground_truth.get(entry["id"])
        if truth is None or request.step > 0:
            return {"content": FINAL_TEXT}
        if entry["id"].startswith("web_search"):
            return {"content": str(truth[0])}  # the checker looks for an expected answer in the last text
        calls = truth[request.turn] if request.turn < len(truth) else []
        if not calls:
            return {"content": FINAL_TEXT}
        functions = list(entry.get("function", []))
        for missed in entry.get("missed_function", {}).values():
            functions.extend(missed)
        parsed = keyword_calls(calls, functions)
        if parsed is None:
            return {"content": f"oracle: cannot parse ground truth {calls!r}"}
        return tool_calls_message(parsed) if request.fc_mode else python_calls_message(parsed)

    def close(self) -> None:
        pass


class NoopPolicy:
    """Answers without calling any tool."""

    def respond(self, request: PolicyRequest) -> dict:
        return {"content": "I will not call any tool."}

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- async policies


class AgentPolicy:
    """An in-process ``agents.base.Agent``: ``await agent.act(messages, tools)``, its ``.message`` is the reply."""

    def __init__(self, agent: Any) -> None:
        self.agent, self.bridge = agent, AsyncBridge()

    def respond(self, request: PolicyRequest) -> dict:
        step = self.bridge.run(self.agent.act(request.messages, request.tools))
        message = dict(step.message)
        return {"content": message.get("content"), "tool_calls": message.get("tool_calls") or [],
                "usage": dict(getattr(step, "usage", None) or {})}

    def close(self) -> None:
        closer = getattr(self.agent, "aclose", None)
        try:
            if closer is not None:
                self.bridge.run(closer())
        finally:
            self.bridge.close()


def build_policy(spec: str, *, categories: list[str], concurrency: int, temperature: float = 0.001) -> Policy:
    """``spec`` is a ``--policy`` string (``cm2_env.specs``, role ``bench``): ``oracle`` and ``noop`` are built
    here; any other spec is an agent from :func:`agents.make_agent`, an endpoint or local model sampling at
    ``temperature``."""
    from agents import make_agent
    from cm2_env.specs import parse

    parsed = parse(spec, "bench")
    if parsed.kind == "oracle":
        return OraclePolicy(categories)
    if parsed.kind == "noop":
        return NoopPolicy()
    options: dict[str, Any] = {"temperature": temperature} if parsed.kind in ("endpoint", "hf") else {}
    if parsed.kind == "endpoint":
        options["client_options"] = {"max_concurrency": concurrency}
    return AgentPolicy(make_agent(parsed.text, role="bench", **options))
