"""CM2 checklist rewards inside TRL's ``GRPOTrainer``, through TRL's ``environment_factory`` interface.

Install with ``pip install "cm2[trl]"`` (TRL >= 1.16, whose ``environment_factory`` is marked experimental
upstream: set ``TRL_EXPERIMENTAL_SILENCE=1`` to silence its warning). Usage (docs/training.md, "Training with
TRL")::

    cm2 = CM2Environments("tooltalk", simulator="replay", judge="rule")
    trainer = GRPOTrainer(model, reward_funcs=cm2_reward, train_dataset=cm2.dataset(),
                          environment_factory=cm2.environment_factory, processing_class=tokenizer, args=...)

Contract:

- :class:`CM2Environments` holds the dialogues and ONE simulator and judge, shared by every environment instance
  (an LLM judge's cache and connection pool serve every rollout). ``dataset()`` has one row per dialogue whose
  first turn has checklist items: ``prompt`` (the system prompt and first user message exactly as the env's
  ``reset`` shows them), ``environment`` (the name of the dialogue's tool set) and ``dialogue_id``.
  ``environment_factory`` maps each tool-set name to a factory, so TRL shows a row only its own tools.
- Each environment is a :class:`CM2TRLEnvironment` subclass whose public async methods are the tools of one tool
  set: the dialogue's JSON schemas become signatures (types, enums) and Google docstrings, which is what TRL and
  transformers read to render the tools in the prompt. A call goes to a ``CM2ToolUseEnv`` episode.
- :func:`cm2_reward` is the reward function. It sends each completion's final reply to its env as the turn's last
  action and returns the env's trajectory reward R (Eq. 4), or ``None`` for a failed episode (a simulator or
  judge error). TRL leaves a rollout that no reward function scored out of its group baseline and gives it
  advantage 0 -- as our trainer leaves failed episodes out -- unless another reward function scores it.
  TRL's log gets ``cm2/failed`` (the fraction of failed rollouts) and ``cm2/unrouted_calls`` (see below).

How an episode maps onto TRL's loop, which has ONE user turn:

- an episode is the dialogue's first turn: the env runs with ``max_turns=1`` and, by default,
  ``normaliser="reached"``, so R is that turn's checklist reward (the reference normaliser would divide it by the
  length of the whole dialogue). Later turns are our own trainer's job (``cm2 train``).
- one assistant message is one env action: TRL runs the tool calls of one message concurrently; the environment
  collects them and steps the env once with all of them (concurrent simulator calls, one judge request), as an
  episode under our own trainer would. TRL's tool interface passes the calls only, so the text written around
  them does not reach the env's transcript; the final reply does, in full.
- the end: a message without tool calls is the turn's last action (also when ``max_completion_length`` cut it,
  as in our own rollouts); when TRL stops its loop with calls still open (``max_tool_calling_iterations``, or no
  room left for the tool results) or the env does not read the message as a final reply (malformed call text),
  the episode is truncated with end reason ``trl_limit`` and R counts what was satisfied. Calls made after the
  env ended the episode (its action limits, a failure) get an error message and do not reach the env.
- TRL answers some calls itself, so they never reach the env: calls of a tool the prompt does not list and calls
  whose arguments are not a JSON object. ``cm2/unrouted_calls`` counts, per rollout, the calls that never
  reached the env: those, and the calls left open when TRL stopped its loop. TRL also converts
  arguments to the types of the tool schema before calling (``"7"`` becomes ``7`` for an integer parameter),
  where the env would have answered a schema error. Hence ``invalid_call_policy="terminate"`` is refused: the
  env cannot end an episode at a call it never sees.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import keyword
import re
from typing import Any, Callable, Literal, Sequence, Union

from cm2_env.backends import build_backends
from cm2_env.data.io import load_dialogues
from cm2_env.env import CM2ToolUseEnv
from cm2_env.toolcalls import render_hermes

#: The end reason of an episode that TRL stopped before a final reply.
TRL_LIMIT = "trl_limit"
_JSON_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "object": dict,
                               "array": list, "null": type(None)}
_RESERVED = ("reset", "get_reward")


class CM2TRLEnvironment:
    """One pooled TRL environment instance: a ``CM2ToolUseEnv`` and the calls of the current assistant message.

    Subclasses made by :class:`CM2Environments` add one async method per tool. TRL calls ``reset(**row)`` before
    each rollout, then the tool methods on its event loop, then :func:`cm2_reward` with the instance. Everything
    but ``reset`` and the tools is private: TRL exposes every public function of the class as a tool.
    """

    def __init__(self, make_env: Callable[[], CM2ToolUseEnv]):
        self._env = make_env()
        self._dialogue_id: str | None = None
        self._info: dict[str, Any] | None = None
        self._pending: tuple[list[dict[str, Any]], asyncio.Future] | None = None
        self._acting: set[asyncio.Task] = set()
        self._routed = 0  # calls that reached the env, this rollout

    def reset(self, **row: Any) -> None:
        """Start a rollout on ``row["dialogue_id"]``. The prompt is already in the row, so nothing is appended to
        it (returns None); the env episode itself starts at the first tool call or reply, on TRL's event loop."""
        dialogue_id = row.get("dialogue_id")
        if dialogue_id is None:
            raise ValueError(f"a dataset row reached {type(self).__name__}.reset without a 'dialogue_id' field (it "
                             f"has {sorted(row)}). Fix: train on CM2Environments.dataset(), or keep its "
                             "'dialogue_id' column")
        self._dialogue_id = str(dialogue_id)
        self._info = None
        self._pending = None
        self._routed = 0

    # --- what the tool methods and cm2_reward call -------------------------------------------------------------

    async def _start(self) -> dict[str, Any]:
        if self._dialogue_id is None:
            raise RuntimeError("a tool or the reward was called before reset(): TRL resets every rollout first")
        if self._info is None:
            _, self._info = await self._env.areset(options={"dialogue_id": self._dialogue_id})
        return self._info

    async def _call(self, name: str, arguments: dict[str, Any]) -> str:
        """One tool call; the calls that TRL starts together (one message's) become one env action.

        TRL gathers a message's calls as tasks on one event loop: each runs up to its first ``await`` before a
        callback scheduled by the first one runs, because asyncio runs ready callbacks in FIFO order. That
        callback takes every call collected so far as one action. A call arriving later forms its own action.
        """
        loop = asyncio.get_running_loop()
        if self._pending is None:
            self._pending = ([], loop.create_future())
            loop.call_soon(self._flush_pending)
        calls, future = self._pending
        index = len(calls)
        calls.append({"name": name, "arguments": arguments})
        results = await future
        return results[index]

    def _flush_pending(self) -> None:
        calls, future = self._pending
        self._pending = None
        task = asyncio.ensure_future(self._act(calls))
        self._acting.add(task)

        def settle(done: asyncio.Task) -> None:
            self._acting.discard(done)
            if future.done():  # a caller was cancelled, and with it the shared future
                return
            if done.cancelled():
                future.cancel()
            elif done.exception() is not None:
                future.set_exception(done.exception())
            else:
                future.set_result(done.result())

        task.add_done_callback(settle)

    async def _act(self, calls: list[dict[str, Any]]) -> list[str]:
        info = await self._start()
        if "end_reason" in info:
            reason = json.dumps({"error": f"the episode has ended ({info['end_reason']}); this call did not run"})
            return [reason] * len(calls)
        before = len(info["messages"])
        self._routed += len(calls)
        *_, self._info = await self._env.astep("\n".join(_call_text(call) for call in calls))
        answers = [m.get("content") or "" for m in self._info["messages"][before:] if m.get("role") == "tool"]
        if len(answers) != len(calls):  # the env answered the action as a whole (e.g. a parse error)
            answers = ["\n".join(answers)] * len(calls)
        return answers

    async def _finish(self, completion: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """End the episode with the completion's final reply (see the module docstring); returns the final info."""
        info = await self._start()
        if "end_reason" not in info:
            last = completion[-1] if completion else {}
            if last.get("role") == "assistant" and not last.get("tool_calls"):
                *_, info = await self._env.astep(_reply_text(last))
            if "end_reason" not in info:
                _, info = await self._env.atruncate(TRL_LIMIT)
            self._info = info
        return info


def _call_text(call: dict[str, Any]) -> str:
    """One call's Hermes text. Arguments that no JSON can hold (NaN, infinities) are written as Python's json
    writes them, which the env's parser reads as bad arguments, so the message's other calls still run."""
    try:
        return render_hermes([call])
    except ValueError:
        body = json.dumps({"name": call["name"], "arguments": call["arguments"]}, default=repr)
        return f"<tool_call>\n{body}\n</tool_call>"


def _unrouted(completion: Sequence[dict[str, Any]], routed: int) -> int:
    """Calls of the completion that never reached the env: TRL answered them itself (unknown tool, arguments
    that are no object) or left them open when it stopped."""
    made = sum(len(m.get("tool_calls") or []) for m in completion
               if isinstance(m, dict) and m.get("role") == "assistant")
    return max(made - routed, 0)


def _reply_text(message: dict[str, Any]) -> str:
    """The action text of a parsed final reply: its content, with the reasoning that TRL's parser split off (if
    any) put back as a ``<think>`` block."""
    content = message.get("content") or ""
    if isinstance(content, list):  # content blocks
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    thinking = message.get("reasoning_content") or message.get("thinking") or message.get("reasoning") or ""
    if isinstance(thinking, str) and thinking.strip() and "<think>" not in content:
        return f"<think>\n{thinking.strip()}\n</think>\n\n{content}"
    return content


async def cm2_reward(prompts: list[Any], completions: list[Any],
                     environments: Sequence[CM2TRLEnvironment] | None = None, **kwargs: Any) -> list[float | None]:
    """TRL reward function: each rollout's final reply goes to its env, whose trajectory reward R is returned
    (``None`` for a failed episode). The episodes finish concurrently (one judge request each at most)."""
    if environments is None or len(environments) != len(completions) or not all(
            isinstance(env, CM2TRLEnvironment) for env in environments):
        raise ValueError("cm2_reward needs the CM2 environment of each completion: pass "
                         "environment_factory=CM2Environments(...).environment_factory to GRPOTrainer")
    infos = await asyncio.gather(*(env._finish(completion) for env, completion in zip(environments, completions)))
    log_metric = kwargs.get("log_metric")
    if log_metric is not None and infos:
        log_metric("cm2/failed", sum(bool(info.get("failed")) for info in infos) / len(infos))
        log_metric("cm2/unrouted_calls", sum(_unrouted(c, env._routed) for c, env in zip(completions, environments))
                   / len(infos))
    return [None if info.get("failed") else float(info["R"]) for info in infos]


cm2_reward.__name__ = "cm2_reward"


class CM2Environments:
    """The dialogues, backends and generated environment classes of one TRL run (see the module docstring).

    Args:
        dataset: a bundled dataset name, a JSONL/JSON path, or a list of dialogues (as for ``CM2ToolUse-v0``).
        simulator / judge: spec strings or objects, as for the env; built once and shared by every instance.
        dialogue_ids: train on these dialogues only (default: every dialogue whose first turn has items).
        normaliser: L of Eq. 4; "reached" (default) makes R the first turn's own reward.
        simulator_options / judge_options: options for spec strings.
        env_options: the env's other keyword options (``strict``, ``max_actions_per_turn``, ``reward_assignment``,
            ``invalid_call_policy``, ...). ``max_turns`` is fixed at 1.
    """

    def __init__(self, dataset: Any = "tooltalk", simulator: Any = "replay", judge: Any = "rule", *,
                 dialogue_ids: Sequence[str] | None = None, normaliser: str = "reached",
                 simulator_options: dict[str, Any] | None = None, judge_options: dict[str, Any] | None = None,
                 **env_options: Any):
        if "max_turns" in env_options:
            raise ValueError("max_turns is fixed at 1 under TRL (its tool loop has one user turn); drop the option")
        if env_options.get("invalid_call_policy") == "terminate":
            raise ValueError("invalid_call_policy='terminate' cannot hold under TRL: TRL answers calls of unknown "
                             "tools and malformed arguments itself, so the env never sees them. Fix: use "
                             "'respond' (the default)")
        dialogues = load_dialogues(dataset)
        if dialogue_ids is not None:
            by_id = {d.id: d for d in dialogues}
            missing = [i for i in dialogue_ids if i not in by_id]
            if missing:
                raise ValueError(f"dialogue_ids not in the dataset: {missing[:5]} ({len(missing)} in all)")
            dialogues = [by_id[i] for i in dialogue_ids]
        else:
            dialogues = [d for d in dialogues if d.checklist() and d.checklist()[0]]
        if not dialogues:
            raise ValueError("no dialogue to train on: the first turn of every dialogue has no checklist item")
        self._dialogues = dialogues
        self._backends = build_backends(simulator, judge, simulator_options=simulator_options,
                                        judge_options=judge_options)
        self._env_options = dict(env_options, normaliser=normaliser, max_turns=1)
        probe = self._make_env()  # also validates the options now rather than in TRL's first batch
        self._rows: list[dict[str, Any]] = []
        self._classes: dict[str, type[CM2TRLEnvironment]] = {}
        try:
            for dialogue in dialogues:
                _, info = probe.reset(options={"dialogue_id": dialogue.id})
                name = _tool_set_name(info["tools"])
                if name not in self._classes:
                    self._classes[name] = environment_class(name, info["tools"], source=f"dialogue {dialogue.id}")
                prompt = [{"role": m["role"], "content": m.get("content") or ""} for m in info["messages"]]
                self._rows.append({"prompt": prompt, "environment": name, "dialogue_id": dialogue.id})
        finally:
            probe.close()  # the private loop only: the shared backends stay open

    def _make_env(self) -> CM2ToolUseEnv:
        return CM2ToolUseEnv(self._dialogues, self._backends.simulator, self._backends.judge, **self._env_options)

    @property
    def dialogue_ids(self) -> list[str]:
        return [row["dialogue_id"] for row in self._rows]

    @property
    def environment_factory(self) -> dict[str, Callable[[], CM2TRLEnvironment]]:
        """``{tool-set name: factory}`` for ``GRPOTrainer(environment_factory=...)``."""
        return {name: (lambda cls=cls: cls(self._make_env)) for name, cls in self._classes.items()}

    def rows(self) -> list[dict[str, Any]]:
        """The training rows as plain dicts (``prompt``, ``environment``, ``dialogue_id``); copies."""
        return json.loads(json.dumps(self._rows))

    def dataset(self):
        """The training rows as a ``datasets.Dataset`` (TRL's ``train_dataset``)."""
        from datasets import Dataset

        return Dataset.from_list(self.rows())

    async def aclose(self) -> None:
        """Close the backends built from spec strings (their LLM clients). Run it on the loop that used them,
        TRL's: ``asyncio.run_coroutine_threadsafe(cm2.aclose(), trainer.async_loop).result()``."""
        await self._backends.aclose()


def _tool_set_name(tools: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256(json.dumps(tools, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return f"cm2_tools_{digest[:12]}"


def environment_class(name: str, tools: list[dict[str, Any]], *, source: str = "") -> type[CM2TRLEnvironment]:
    """A :class:`CM2TRLEnvironment` subclass named ``name`` with one async method per OpenAI function tool.
    Raises ``ValueError`` (naming ``source``, the tool and the parameter) for a tool TRL cannot expose."""
    methods = {}
    for tool in tools:
        function = tool.get("function") or {}
        tool_name = function.get("name")
        where = f"{source}: tool {tool_name!r}" if source else f"tool {tool_name!r}"
        if not isinstance(tool_name, str) or not _identifier(tool_name) or tool_name.startswith("_") \
                or tool_name in _RESERVED:
            raise ValueError(f"{where}: TRL exposes tools as Python methods, so a name must be an identifier that "
                             f"is no Python keyword, does not start with '_' and is not one of {_RESERVED}. Fix: "
                             "rename the tool")
        if tool_name in methods:
            raise ValueError(f"{where} is defined twice in one tool set. Fix: keep one definition")
        methods[tool_name] = _tool_method(tool_name, function, where)
    return type(name, (CM2TRLEnvironment,), {**methods, "__module__": __name__})


def _tool_method(tool_name: str, function: dict[str, Any], where: str) -> Callable[..., Any]:
    parameters = function.get("parameters") or {}
    properties = parameters.get("properties") or {}
    required = set(parameters.get("required") or [])
    signature = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    annotations: dict[str, Any] = {}
    lines = [_one_line(function.get("description") or tool_name)]
    if properties:
        lines += ["", "Args:"]
    for param, schema in properties.items():
        if not _identifier(param) or param == "self":
            raise ValueError(f"{where}: parameter {param!r} is not a Python identifier (or is a keyword or "
                             "'self'), which TRL's tool methods need. Fix: rename the parameter")
        annotations[param] = _annotation(schema if isinstance(schema, dict) else {}, f"{where}, parameter {param!r}")
        default = inspect.Parameter.empty if param in required else None
        signature.append(inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=default,
                                           annotation=annotations[param]))
        description = schema.get("description") if isinstance(schema, dict) else None
        lines.append(f"    {param}: {_one_line(description or param)}")

    async def tool(self: CM2TRLEnvironment, **arguments: Any) -> str:
        return await self._call(tool_name, arguments)

    tool.__name__ = tool.__qualname__ = tool_name
    tool.__doc__ = "\n".join(lines)
    tool.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    tool.__annotations__ = annotations
    return tool


def _identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _one_line(text: str) -> str:
    # Google docstrings delimit arguments by lines: a description must stay on one line and must not end in
    # something transformers reads as an enum block.
    return re.sub(r"\s+", " ", str(text)).strip().replace("(choices:", "(choices -")


def _annotation(schema: dict[str, Any], where: str) -> Any:
    """The Python type hint whose JSON schema (as transformers derives it) matches ``schema``'s type and enum."""
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, (str, int, float, bool)) for v in enum):
        return Literal[tuple(enum)]
    kind = schema.get("type")
    if isinstance(kind, list) and kind:
        hints = tuple(_annotation({**schema, "type": k}, where) for k in kind)
        return hints[0] if len(hints) == 1 else Union[hints]
    if kind == "array":
        items = schema.get("items")
        return list[_annotation(items, where)] if isinstance(items, dict) and items.get("type") else list
    if isinstance(kind, str) and kind in _JSON_TYPES:
        return _JSON_TYPES[kind]
    if kind is None:  # no type: any JSON value (transformers writes an empty schema)
        return Any
    raise ValueError(f"{where}: JSON schema type {kind!r} has no Python type hint for TRL's tool schema. Fix: "
                     f"give the parameter one of the types {sorted(_JSON_TYPES)}")


def add_tool_call_parser(tokenizer: Any) -> Any:
    """Give ``tokenizer`` the response parser TRL needs to read tool calls, and return it.

    Kept when it has one; else TRL's for a chat template TRL knows; else, for a chat template that writes Hermes
    ``<tool_call>`` blocks in ChatML (Qwen's format, the format of cm2's tiny models), TRL's Qwen3 parser.
    Raises ``ValueError`` for any other template, saying what to set.
    """
    if getattr(tokenizer, "response_template", None) is not None or getattr(tokenizer, "response_schema", None):
        return tokenizer
    from trl.chat_template_utils import add_response_schema, qwen3_template

    try:
        return add_response_schema(tokenizer)
    except ValueError:
        template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
        if "<tool_call>" in template and "<|im_start|>" in template:
            tokenizer.response_template = qwen3_template
            return tokenizer
        raise ValueError("TRL cannot parse tool calls of this tokenizer's chat template (it writes neither a format "
                         "TRL knows nor Hermes <tool_call> blocks in ChatML). Fix: set tokenizer.response_template "
                         "as transformers' response-parsing docs describe") from None
