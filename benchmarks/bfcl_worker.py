"""The BFCL v4 worker: runs INSIDE a subprocess started by ``benchmarks.bfcl`` and nowhere else.

BFCL's checker executes call strings with Python's ``eval`` against its backends, so everything that imports
``bfcl_eval`` lives here, in a throw-away process whose ``BFCL_PROJECT_ROOT`` points into the run directory.

Contract: ``python -m benchmarks.bfcl_worker JOB.json``. The job is ``{"runs": [RUN, ...], "log": PATH}``; each
RUN is ``{"name", "policy": SPEC, "mode": "fc"|"prompting", "categories", "limit", "concurrency",
"temperature", "result_dir", "score_dir", "clear_instance_cache"}``. Runs execute one after another in this
process; for each run the worker

1. registers a ``ModelConfig`` named ``name`` whose handler is a subclass of BFCL's
   ``OpenAICompletionsHandler`` with only the request method replaced (``generate_with_backoff``): it asks our
   policy (``bfcl_policies``) for the assistant message and hands BFCL a ``ChatCompletion``, so BFCL's own
   multi-turn loop parses it, executes the calls and builds the history;
2. runs the selected entries (first ``limit`` of each category) on a thread pool of ``concurrency`` workers,
   skipping entries already in the result files (resumable) and re-running entries that ended in an error;
3. scores each category with BFCL's own ``eval_runner.evaluate_task`` (multi-turn checker / agentic checker),
   which writes ``score/<name>/.../BFCL_v4_<category>_score.json``.

BFCL caches backend instances in module globals keyed by model name and entry id; the cache is cleared before
and after every run (docs/benchmarks.md, the instance cache) unless ``clear_instance_cache`` is false.
Progress goes to the original stdout as JSON lines (``{"event": ...}``); everything BFCL prints goes to the log.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import sys
import threading
import time
import traceback
import types
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from benchmarks.bfcl_policies import Policy, PolicyRequest, build_policy

INFERENCE_ERROR_PREFIX = "Error during inference"


# --------------------------------------------------------------------------- importing BFCL's minimal install


def install_bfcl_import_shims() -> None:
    """Make BFCL's registry and eval runner importable with the minimal install (docs/benchmarks.md, "Install").

    ``bfcl_eval.constants.model_config`` imports every vendor SDK (anthropic, cohere, ...) to build its table;
    where that fails, an empty registry with the same ``ModelConfig`` fields stands in (we only register our own
    model). ``pandas`` and ``python-dotenv`` are imported at module level by the eval runner but used only for
    the leaderboard CSVs and ``.env`` loading, which we do not call; placeholders raise if anything touches them.
    """
    os.environ.setdefault("BFCL_PROJECT_ROOT", os.getcwd())
    name = "bfcl_eval.constants.model_config"
    if name not in sys.modules:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = _registry_module(name)
    if importlib.util.find_spec("pandas") is None:
        sys.modules["pandas"] = _placeholder_module("pandas", "BFCL's leaderboard CSVs")
    if importlib.util.find_spec("dotenv") is None:
        dotenv = types.ModuleType("dotenv")
        dotenv.load_dotenv = lambda *args, **kwargs: False  # type: ignore[attr-defined]
        sys.modules["dotenv"] = dotenv


def _registry_module(name: str) -> types.ModuleType:
    from dataclasses import dataclass as _dataclass
    from typing import Optional

    @_dataclass
    class ModelConfig:  # same fields as bfcl_eval.constants.model_config.ModelConfig (2026.3.23)
        model_name: str
        display_name: str
        url: str
        org: str
        license: str
        model_handler: Any
        input_price: Optional[float] = None
        output_price: Optional[float] = None
        is_fc_model: bool = True
        underscore_to_dot: bool = False

    module = types.ModuleType(name)
    module.ModelConfig = ModelConfig  # type: ignore[attr-defined]
    module.MODEL_CONFIG_MAPPING = {}  # type: ignore[attr-defined]
    return module


def _placeholder_module(name: str, used_for: str) -> types.ModuleType:
    class Placeholder(types.ModuleType):
        def __getattr__(self, attr: str) -> Any:
            if attr.startswith("__"):
                raise AttributeError(attr)
            raise ImportError(f"{name} is not installed; it is only needed for {used_for}")

    return Placeholder(name)


# --------------------------------------------------------------------------- the handler


def make_policy_handler_class(policy: Policy) -> type:
    """A subclass of BFCL's OpenAI completions handler whose request method asks ``policy`` instead of HTTP.

    Only the request (``generate_with_backoff``) and the bookkeeping hooks that tell the policy which entry,
    turn and step it is answering are overridden; tool compilation, response parsing, history building, call
    execution and decoding are BFCL's own. No OpenAI client is constructed (all LLM HTTP goes through
    ``cm2_env.llm``, inside the policy).
    """
    from bfcl_eval.constants.enums import ModelStyle
    from bfcl_eval.model_handler.api_inference.openai_completion import OpenAICompletionsHandler
    from bfcl_eval.model_handler.base_handler import BaseHandler
    from openai.types.chat import ChatCompletion

    class PolicyHandler(OpenAICompletionsHandler):
        def __init__(self, model_name, temperature, registry_name, is_fc_model, **kwargs) -> None:
            BaseHandler.__init__(self, model_name, temperature, registry_name, is_fc_model, **kwargs)
            self.model_style = ModelStyle.OPENAI_COMPLETIONS
            self.client = None
            self.policy = policy
            self._local = threading.local()  # one entry per worker thread

        def inference(self, test_entry: dict, include_input_log: bool, exclude_state_log: bool):
            self._local.entry, self._local.turn, self._local.step = test_entry, -1, 0
            return super().inference(test_entry, include_input_log, exclude_state_log)

        def _next_turn(self) -> None:
            self._local.turn += 1
            self._local.step = 0

        def add_first_turn_message_FC(self, inference_data, first_turn_message):
            self._next_turn()
            return super().add_first_turn_message_FC(inference_data, first_turn_message)

        def _add_next_turn_user_message_FC(self, inference_data, user_message):
            self._next_turn()
            return super()._add_next_turn_user_message_FC(inference_data, user_message)

        def add_first_turn_message_prompting(self, inference_data, first_turn_message):
            self._next_turn()
            return super().add_first_turn_message_prompting(inference_data, first_turn_message)

        def _add_next_turn_user_message_prompting(self, inference_data, user_message):
            self._next_turn()
            return super()._add_next_turn_user_message_prompting(inference_data, user_message)

        def generate_with_backoff(self, **kwargs):
            started = time.perf_counter()
            request = PolicyRequest(
                messages=[_message_dict(message) for message in kwargs["messages"]],
                tools=list(kwargs.get("tools") or []),
                entry=self._local.entry,
                turn=self._local.turn,
                step=self._local.step,
                fc_mode=self.is_fc_model,
                temperature=self.temperature,
            )
            reply = self.policy.respond(request)
            self._local.step += 1
            return _chat_completion(ChatCompletion, reply, self.model_name), time.perf_counter() - started

    return PolicyHandler


def _message_dict(message: Any) -> dict:
    """BFCL keeps the SDK message objects it received in its history; policies get plain dicts."""
    if isinstance(message, dict):
        return message
    return message.model_dump(exclude_none=True)


def _tool_call(index: int, call: Any) -> dict:
    """An OpenAI tool call as the SDK type accepts it, whatever shape the policy produced (BFCL judges it)."""
    function = call.get("function") if isinstance(call, dict) else None
    function = function if isinstance(function, dict) else {}
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, default=str)
    return {"id": str(call.get("id") or f"call_{index}") if isinstance(call, dict) else f"call_{index}",
            "type": "function", "function": {"name": str(function.get("name") or ""), "arguments": arguments}}


def _chat_completion(completion_type: type, reply: dict, model: str) -> Any:
    tool_calls = [_tool_call(index, call) for index, call in enumerate(reply.get("tool_calls") or [])]
    content = reply.get("content")
    message: dict[str, Any] = {"role": "assistant", "content": None if content is None else str(content)}
    if tool_calls:
        message["tool_calls"] = tool_calls
    usage = reply.get("usage") or {}
    prompt_tokens, completion_tokens = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return completion_type.model_validate(
        {
            "id": "cm2-policy",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "tool_calls" if tool_calls else "stop", "message": message}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


# --------------------------------------------------------------------------- one run


@dataclass
class RunJob:
    name: str
    policy: str  # a spec string (cm2_env.specs, role "bench")
    mode: str
    categories: list[str]
    limit: int | None
    concurrency: int
    temperature: float
    result_dir: Path
    score_dir: Path
    clear_instance_cache: bool = True

    @classmethod
    def from_json(cls, raw: dict) -> "RunJob":
        return cls(**{**raw, "result_dir": Path(raw["result_dir"]), "score_dir": Path(raw["score_dir"])})


def clear_backend_instance_cache() -> int:
    """Drop every backend instance BFCL cached in ``multi_turn_utils`` globals; return how many were dropped."""
    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    cached = [
        key
        for key, value in vars(multi_turn_utils).items()
        if key.endswith("_instance") and type(value).__name__ in CLASS_FILE_PATH_MAPPING
    ]
    for key in cached:
        del vars(multi_turn_utils)[key]
    return len(cached)


def register_model(job: RunJob, policy: Policy) -> Any:
    """Register ``job.name`` in BFCL's ``MODEL_CONFIG_MAPPING`` and return BFCL's handler for it."""
    from bfcl_eval.constants import model_config
    from bfcl_eval.eval_checker import eval_runner

    model_config.MODEL_CONFIG_MAPPING[job.name] = model_config.ModelConfig(
        model_name=job.name,
        display_name=f"{job.name} (cm2 policy)",
        url="https://arxiv.org/abs/2602.12268",
        org="cm2",
        license="Apache-2.0",
        model_handler=make_policy_handler_class(policy),
        is_fc_model=job.mode == "fc",
    )
    handler = eval_runner.get_handler(job.name)  # BFCL's own lookup: what its CLI would construct
    handler.temperature = job.temperature
    return handler


def select_entries(category: str, limit: int | None) -> list[dict]:
    from bfcl_eval.utils import load_dataset_entry, populate_initial_settings_for_web_search_test_cases, sort_key

    entries = sorted(load_dataset_entry(category), key=sort_key)[:limit]
    return populate_initial_settings_for_web_search_test_cases(entries)


def result_file(job: RunJob, category: str) -> Path:
    from bfcl_eval.utils import get_directory_structure_by_category, get_file_name_by_category

    return (
        job.result_dir / job.name.replace("/", "_") / get_directory_structure_by_category(category)
        / get_file_name_by_category(category, is_result_file=True)
    )


def finished_ids(path: Path) -> set[str]:
    """Ids with a usable result in ``path``; results that ended in an inference error are removed (re-run)."""
    from cm2_env.records import resume_jsonl

    def accept(record: dict) -> str | None:
        failed = isinstance(record.get("result"), str) and record["result"].startswith(INFERENCE_ERROR_PREFIX)
        return None if failed else record["id"]

    return set(resume_jsonl(path, accept))


def infer_one(handler: Any, entry: dict) -> dict:
    """BFCL's ``multi_threaded_inference``: a failing entry is recorded as an error result, not raised."""
    try:
        result, metadata = handler.inference(copy.deepcopy(entry), False, True)
    except Exception as exc:  # the policy or the endpoint failed; the entry scores 0 and is re-run on resume
        result, metadata = f"{INFERENCE_ERROR_PREFIX}: {exc}", {"traceback": traceback.format_exc()}
    return {"id": entry["id"], "result": result, **metadata}


def generate(job: RunJob, handler: Any, entries: list[dict], events: "EventStream") -> None:
    """Run ``entries`` through BFCL's loop on ``job.concurrency`` threads, appending each result as it lands."""
    if not entries:
        return
    with ThreadPoolExecutor(max_workers=job.concurrency) as pool:
        pending = iter(entries)
        in_flight = {}
        for entry in pending:
            in_flight[pool.submit(infer_one, handler, entry)] = entry
            if len(in_flight) >= job.concurrency:
                break
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                entry = in_flight.pop(future)
                record = future.result()
                handler.write(record, result_dir=job.result_dir)  # single writer: the main thread
                failed = isinstance(record["result"], str) and record["result"].startswith(INFERENCE_ERROR_PREFIX)
                events.emit("entry", id=entry["id"], error=record["result"] if failed else None)
                next_entry = next(pending, None)
                if next_entry is not None:
                    in_flight[pool.submit(infer_one, handler, next_entry)] = next_entry


def score(job: RunJob, handler: Any, category: str, selected_ids: set[str]) -> dict:
    """Score the selected entries of one category with BFCL's ``evaluate_task``; return its table row."""
    from bfcl_eval.eval_checker import eval_runner
    from bfcl_eval.utils import load_file

    path = result_file(job, category)
    model_result = [record for record in load_file(path, sort_by_id=True) if record["id"] in selected_ids]
    dir_name = job.name.replace("/", "_")
    table = eval_runner.evaluate_task(
        category, job.result_dir, job.score_dir, model_result, dir_name, handler, {}, allow_missing=True
    )
    return table[dir_name][category]


def run(job: RunJob, events: "EventStream") -> None:
    if job.clear_instance_cache:
        clear_backend_instance_cache()
    policy = build_policy(job.policy, categories=job.categories, concurrency=job.concurrency,
                          temperature=job.temperature)
    try:
        handler = register_model(job, policy)
        selections = {category: select_entries(category, job.limit) for category in job.categories}
        for category, entries in selections.items():
            done = finished_ids(result_file(job, category))
            todo = [entry for entry in entries if entry["id"] not in done]
            events.emit("category", category=category, total=len(entries), todo=len(todo))
            generate(job, handler, todo, events)
        for category, entries in selections.items():
            row = score(job, handler, category, {entry["id"] for entry in entries})
            events.emit("scored", category=category, accuracy=row["accuracy"], total=row["total_count"])
    finally:
        policy.close()
        if job.clear_instance_cache:
            clear_backend_instance_cache()


class EventStream:
    """JSON lines on the worker's original stdout, which the parent reads; thread-safe."""

    def __init__(self, stream: TextIO, run_index: int = 0) -> None:
        self._stream, self._lock, self.run_index = stream, threading.Lock(), run_index

    def emit(self, event: str, **fields: Any) -> None:
        with self._lock:
            self._stream.write(json.dumps({"event": event, "run": self.run_index, **fields}) + "\n")
            self._stream.flush()


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    # Keep the original stdout for events; BFCL's prints (several lines per step) go to the log.
    events = EventStream(os.fdopen(os.dup(1), "w", buffering=1))
    sys.stdout.flush()
    log = open(job["log"], "a", buffering=1)
    os.dup2(log.fileno(), 1)
    install_bfcl_import_shims()
    for index, raw in enumerate(job["runs"]):
        events.run_index = index
        try:
            run(RunJob.from_json(raw), events)
        except Exception as exc:
            traceback.print_exc()
            events.emit("failed", error=f"{type(exc).__name__}: {exc}")
            return 1
        events.emit("run_done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
