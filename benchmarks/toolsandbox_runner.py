"""The half of ``cm2 bench toolsandbox`` that runs inside the user's ToolSandbox environment.

``benchmarks.toolsandbox`` starts it with the interpreter given as ``--python``: a Python where ToolSandbox
(``tool_sandbox``) is installed, apart from cm2, because ToolSandbox pins old libraries. It imports only the
standard library and ToolSandbox, never cm2. Two commands, JSON on stdout, progress and ToolSandbox's own noise
on stderr:

- ``list``: one JSON object: ``git_sha`` (of the ToolSandbox checkout, ``+ local changes`` when it has some) and
  ``scenarios``, each ``{"name", "categories", "rapidapi", "base"}``. ``rapidapi`` is true when the scenario's
  base scenario allows one of ToolSandbox's live RapidAPI tools (those need a ``RAPID_API_KEY``).
- ``run JOB.json``: plays the job's scenarios through ToolSandbox's own ``Scenario.play_and_evaluate`` (its
  roles, execution environment and milestone/minefield evaluation) and prints one JSON line per scenario as it
  ends: ``name``, ``categories``, ``similarity``, ``milestone_similarity``, ``minefield_similarity``,
  ``turn_count``, ``exception_type``, ``error``, ``unreachable``, ``seconds``. A scenario that raises scores 0,
  as in ToolSandbox's CLI; ``unreachable`` marks one that raised because an endpoint was down (connection,
  timeout, rate limit, server error). The job: ``names``, ``agent`` and ``user`` (each ``{"kind": "endpoint", "base_url", "model",
  "api_key_env"}``; the agent may be ``{"kind": "unhelpful"}``, ToolSandbox's own unhelpful agent; the user may
  be ``{"kind": "scripted"}``, which ends the conversation as soon as the agent speaks to it), ``processes``
  and ``output_dir`` (ToolSandbox's trajectory files).

As ToolSandbox's CLI does, ``random`` is seeded with 42 before the scenarios are built (the build shuffles tool
lists). Scenarios share global state inside ToolSandbox, so parallel scenarios run in separate worker processes
(spawned, as the CLI's pool), ``processes`` of them, each playing one scenario at a time; every worker builds
the scenarios once.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# ToolSandbox's augmentations name a variant <base><suffix>.
VARIANT_SUFFIXES = ("_3_distraction_tools_tool_description_scrambled", "_3_distraction_tools_arg_type_scrambled",
                    "_3_distraction_tools_arg_description_scrambled", "_3_distraction_tools_tool_name_scrambled",
                    "_3_distraction_tools", "_10_distraction_tools", "_all_tools")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCENARIOS: dict[str, Any] = {}
_PROTOCOL: Any = None  # the protocol's stream: the original stdout, opened on a private descriptor (see _quiet)


def _quiet() -> None:
    """Keep the original stdout for the protocol alone: its descriptor is duplicated for :func:`_emit`, and
    descriptor 1 (what Python, C libraries and child processes print to) now goes to stderr."""
    global _PROTOCOL
    if _PROTOCOL is None:
        _PROTOCOL = os.fdopen(os.dup(1), "w", encoding="utf-8")
        sys.stdout.flush()
        os.dup2(2, 1)
    sys.stdout = sys.stderr


def build_scenarios() -> dict[str, Any]:
    """Every named scenario, built as ToolSandbox's CLI builds them (``random`` seeded with 42 first)."""
    if not _SCENARIOS:
        from tool_sandbox.cli.utils import resolve_scenarios
        from tool_sandbox.common.tool_discovery import ToolBackend

        random.seed(42)
        _SCENARIOS.update(resolve_scenarios(None, ToolBackend.DEFAULT))
    return _SCENARIOS


def git_sha() -> str | None:
    import tool_sandbox

    folder = Path(tool_sandbox.__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{sha} + local changes" if dirty else sha


def list_scenarios() -> dict[str, Any]:
    import tool_sandbox.tools.rapid_api_search_tools as rapid_module
    from tool_sandbox.common.execution_context import ScenarioCategories
    from tool_sandbox.common.tool_discovery import ToolBackend, find_tools_by_module

    rapid = {name for name, tool in find_tools_by_module(rapid_module, ToolBackend.DEFAULT).items()
             if tool.__module__ == rapid_module.__name__}  # the module also imports tools from elsewhere
    scenarios = build_scenarios()
    bases = {name for name, s in scenarios.items() if ScenarioCategories.NO_DISTRACTION_TOOLS in s.categories}
    rapid_bases = {name for name in bases if set(scenarios[name].starting_context.tool_allow_list or []) & rapid}
    rows = []
    for name, scenario in scenarios.items():
        base = base_of(name, bases)
        rows.append({"name": name, "categories": [str(c) for c in scenario.categories], "base": base,
                     "rapidapi": base in rapid_bases})
    return {"git_sha": git_sha(), "scenarios": rows}


def base_of(name: str, bases: set[str]) -> str:
    """The base scenario of a variant (the variant's own name when it is a base or matches none)."""
    if name in bases:
        return name
    for suffix in VARIANT_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in bases:
            return name[: -len(suffix)]
    return name


# --- roles ---------------------------------------------------------------------------------------------------


def _clean(response: Any) -> Any:
    """Make an OpenAI-compatible answer safe for ToolSandbox's roles: ``tool_calls: []`` becomes None (else its
    agent adds no message and the scenario loops until its message limit), empty content with no calls becomes
    "", and call ids become Python identifiers (ToolSandbox writes ``<id>_parameters = ...`` as code)."""
    for choice in response.choices:
        message = choice.message
        if message.tool_calls is not None and not message.tool_calls:
            message.tool_calls = None
        if message.tool_calls is None and message.content is None:
            message.content = ""
        for call in message.tool_calls or []:
            if not _IDENTIFIER.match(call.id or ""):
                call.id = "call_" + re.sub(r"[^A-Za-z0-9_]", "_", call.id or "x")
    return response


def _client(spec: dict[str, Any]) -> Any:
    from openai import OpenAI

    key = os.environ.get(spec.get("api_key_env") or "", "") or "EMPTY"
    return OpenAI(base_url=spec["base_url"], api_key=key, max_retries=2, timeout=float(spec.get("timeout_s", 600)))


def make_agent(spec: dict[str, Any]) -> Any:
    from tool_sandbox.roles.openai_api_agent import OpenAIAPIAgent
    from tool_sandbox.roles.unhelpful_agent import UnhelpfulAgent

    return UnhelpfulAgent() if spec["kind"] == "unhelpful" else _endpoint_role(OpenAIAPIAgent, spec)


def make_user(spec: dict[str, Any]) -> Any:
    from tool_sandbox.roles.openai_api_user import OpenAIAPIUser

    return ScriptedUser() if spec["kind"] == "scripted" else _endpoint_role(OpenAIAPIUser, spec)


def _endpoint_role(role: type, spec: dict[str, Any]) -> Any:
    """ToolSandbox's OpenAI agent or user role with its hard-coded api.openai.com client replaced by one for the
    spec's endpoint (the role's own __init__ is skipped), and its answers made safe (:func:`_clean`)."""

    class EndpointRole(role):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.model_name = spec["model"]
            self.openai_client = _client(spec)

        def model_inference(self, openai_messages: Any, openai_tools: Any) -> Any:
            return _clean(super().model_inference(openai_messages=openai_messages, openai_tools=openai_tools))

    return EndpointRole()


def ScriptedUser() -> Any:  # noqa: N802 - a role factory, named as the class it returns
    """A user who ends the conversation as soon as the agent speaks to it: enough for scenarios whose user
    says everything in the first message (ToolSandbox's single-user-turn scenarios)."""
    from openai.types.chat import ChatCompletion
    from tool_sandbox.roles.openai_api_user import OpenAIAPIUser

    class _ScriptedUser(OpenAIAPIUser):
        def __init__(self) -> None:
            self.model_name = "scripted-user"

        def model_inference(self, openai_messages: Any, openai_tools: Any) -> Any:
            names = [t["function"]["name"] for t in openai_tools] if isinstance(openai_tools, list) else []
            end = next((n for n in names if "end_conversation" in n), None)
            message: dict[str, Any] = {"role": "assistant", "content": "Thank you."}
            if end is not None:
                message = {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_end", "type": "function", "function": {"name": end, "arguments": "{}"}}]}
            return ChatCompletion.model_validate({
                "id": "scripted", "object": "chat.completion", "created": 0, "model": self.model_name,
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if end else "stop"}]})

    return _ScriptedUser()


# --- playing ---------------------------------------------------------------------------------------------------


def play(name: str, job: dict[str, Any]) -> dict[str, Any]:
    """One scenario through ToolSandbox's own play-and-evaluate; never raises."""
    from tool_sandbox.common.execution_context import RoleType
    from tool_sandbox.roles.execution_environment import ExecutionEnvironment

    started = time.monotonic()
    scenario = build_scenarios()[name]
    row: dict[str, Any] = {"name": name, "categories": [str(c) for c in scenario.categories]}
    roles: dict[Any, Any] = {}
    try:
        roles = {RoleType.USER: make_user(job["user"]), RoleType.EXECUTION_ENVIRONMENT: ExecutionEnvironment(),
                 RoleType.AGENT: make_agent(job["agent"])}
        result = scenario.play_and_evaluate(roles=roles, output_directory=Path(job["output_dir"]),
                                            scenario_name=name).evaluation_result
        row.update(similarity=result.similarity, milestone_similarity=result.milestone_similarity,
                   minefield_similarity=result.minefield_similarity, turn_count=result.turn_count,
                   exception_type=None, error=None)
    except Exception as exc:  # noqa: BLE001 - ToolSandbox's CLI scores a scenario that raises as 0
        row.update(similarity=0.0, milestone_similarity=0.0, minefield_similarity=0.0,
                   turn_count=scenario.max_messages, exception_type=type(exc).__name__,
                   error="".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:],
                   unreachable=_unreachable(exc))
        print(traceback.format_exc(), file=sys.stderr)
    finally:
        for role in roles.values():
            try:
                role.teardown()
            except Exception:  # noqa: BLE001 - a role that fails to tear down must not lose the result
                pass
    row["seconds"] = round(time.monotonic() - started, 3)
    return row


def _unreachable(exc: BaseException) -> bool:
    """Whether an endpoint could not be reached or failed on its side (connection, timeout, rate limit, 5xx):
    an outage, not the policy's doing. The adapter records no result for it, so a resumed run plays it again.
    A 500 that ``cm2 serve`` marks ``policy_error`` is the policy raising: a result (similarity 0), as any
    exception of the agent is in ToolSandbox."""
    import openai

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # tenacity wraps the last error in a RetryError
        seen.add(id(exc))
        if isinstance(exc, openai.InternalServerError) and "policy_error" in str(getattr(exc, "body", "") or ""):
            return False
        if isinstance(exc, (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)):
            return True
        last = getattr(exc, "last_attempt", None)
        exc = (last.exception() if last is not None else None) or exc.__cause__ or exc.__context__
    return False


def _play_in_worker(args: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    name, job = args
    return play(name, job)


def run(job_path: str) -> None:
    """Play the job's scenarios: in this process when ``processes`` is 1, else in a pool of spawned worker
    processes (each builds the scenarios once and plays one scenario after another). A worker that dies (killed,
    out of memory) breaks the pool: the runner then stops with an error instead of waiting for it, and the
    adapter keeps what finished."""
    job = json.loads(Path(job_path).read_text())
    names = list(job["names"])
    processes = max(1, int(job.get("processes", 1)))
    if processes == 1 or len(names) == 1:
        for name in names:
            _emit(play(name, job))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(min(processes, len(names)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_quiet) as pool:
        for future in as_completed([pool.submit(_play_in_worker, (name, job)) for name in names]):
            _emit(future.result())


def _emit(row: dict[str, Any]) -> None:
    _PROTOCOL.write(json.dumps(row) + "\n")
    _PROTOCOL.flush()


def main(argv: list[str]) -> int:
    _quiet()
    if argv[:1] == ["list"]:
        _emit(list_scenarios())
        return 0
    if argv[:1] == ["run"] and len(argv) == 2:
        run(argv[1])
        return 0
    print("usage: toolsandbox_runner.py list | run JOB.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
