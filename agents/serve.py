"""``cm2 serve``: any cm2 policy as an OpenAI-compatible chat endpoint (an ASGI app on uvicorn).

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

Contract:

- A request is an OpenAI chat-completions body: ``model`` (the served name, else 404), ``messages`` (system, user,
  assistant with ``tool_calls``, tool), optional ``tools``, ``tool_choice``, ``seed`` and ``metadata``. ``stream``
  and ``n`` > 1 are refused with 400. Sampling settings (temperature, token budget) belong to the served policy
  and are set when the server starts; a request's own are ignored, and its ``seed`` becomes the action's
  ``sampling_seed``.
- The answer is one ``chat.completion``. With ``tools`` (and ``tool_choice`` not ``"none"``) the policy's calls come
  back as native ``tool_calls`` (arguments as JSON strings, fresh ids) and ``finish_reason`` is ``"tool_calls"``;
  the visible text is ``content`` and a ``<think>`` block is ``reasoning_content``. Without tools the answer is
  the policy's text as written. ``finish_reason`` is ``"length"`` when a local model ran out of tokens.
- The policy is any agent (:class:`agents.base.Agent`): ``hf:PATH`` models (concurrent requests are batched by
  the agent), endpoints, ``replay`` and ``probe:`` agents, Python objects. It gets the context the env would give:
  ``turn`` (user messages so far, minus one), ``action`` (assistant messages since the last user message) and
  ``dialogue_id`` -- from ``metadata.dialogue_id``, or, for policies that play bundled dialogues (``replay``,
  ``probe:``), found by the first user message; such a policy answers 400 (``code: "unknown_dialogue"``) to a
  request whose dialogue is not one it was given.
- Errors are OpenAI-shaped (``{"error": {"message", "type", "param", "code"}}``): 400 for a bad request or a
  prompt longer than the policy's context (the message says "maximum context length", which OpenAI clients and
  cm2's endpoint agent recognise), 401 without the API key when one is set, 404 for another model, 500 when the
  policy raises (``code: "policy_error"``: a bug or a bad request for that policy, not an outage; only the
  exception's type is said), 413 for a body over :data:`MAX_BODY_BYTES`. One log line per request: route, status,
  message and tool counts, calls returned, seconds -- never headers, keys, message text or exception messages
  (which may quote the request).
- ``tool_choice``: ``"auto"`` (default) or ``"none"`` (the policy gets no tools and answers in text); forcing a
  call (``"required"``, a named function) is refused with 400, because a cm2 policy cannot be forced.
- The server listens on loopback unless told otherwise, and stops cleanly on SIGINT/SIGTERM (uvicorn's handlers),
  closing the policy's clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from agents.base import Agent, AgentStep, ContextLimitExceeded
from cm2_env.toolcalls import parse, render_openai

log = logging.getLogger("cm2.serve")
_ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_BODY_BYTES = 32 * 1024 * 1024


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` and an OpenAI error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatServer:
    """What the app serves: ``agent`` under ``model_name``. ``dialogues``: for a policy that plays bundled
    dialogues (``replay``, ``probe:``), a request's dialogue is the one whose first user message it repeats or
    that ``metadata.dialogue_id`` names; given dialogues, the server refuses (400) any request for another one,
    so pass them only for such policies. ``api_key`` (if set) is required as ``Authorization: Bearer KEY``."""

    agent: Agent
    model_name: str = "cm2-policy"
    dialogues: Sequence[Any] = ()
    api_key: str | None = None
    requests: int = 0
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        firsts: dict[str, list[str]] = {}
        for dialogue in self.dialogues:
            user = next((m for m in dialogue.messages if m.role == "user"), None)
            if user is not None:
                firsts.setdefault(user.text.strip(), []).append(dialogue.id)
        self._by_first_user = {text: ids[0] for text, ids in firsts.items() if len(ids) == 1}
        self._shared_first_user = {text for text, ids in firsts.items() if len(ids) > 1}
        self._known = {dialogue.id for dialogue in self.dialogues}

    async def complete(self, body: Any) -> dict[str, Any]:
        """The ``chat.completion`` for a request body (raises :class:`RequestError`)."""
        request = self._check(body)
        messages = [_agent_message(m, i) for i, m in enumerate(request["messages"])]
        _name_tool_messages(messages)
        native = bool(request.get("tools")) and request.get("tool_choice") != "none"
        tools = (request.get("tools") or []) if native else []
        context = self._context(messages, request)
        try:
            step = await self.agent.act(messages, tools, context)
        except ContextLimitExceeded as exc:
            raise RequestError(400, f"This model's maximum context length is exceeded: {exc}",
                               param="messages", code="context_length_exceeded") from exc
        self.requests += 1
        return self._response(step, native)

    def _check(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        if "model" not in body:
            raise RequestError(400, "model is required", param="model")
        model = body.get("model")
        if model != self.model_name:
            raise RequestError(404, f"The model {model!r} does not exist; this server serves {self.model_name!r}",
                               param="model", code="model_not_found")
        if body.get("stream"):
            raise RequestError(400, "stream=true is not supported: ask for the whole answer", param="stream")
        if body.get("n", 1) != 1:
            raise RequestError(400, "only n=1 is supported: send one request per sample", param="n")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "messages must be a non-empty list of chat messages", param="messages")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in _ROLES:
                raise RequestError(400, f"messages[{i}] must be an object whose role is one of {list(_ROLES)}",
                                   param=f"messages[{i}]")
        tools = body.get("tools")
        if tools is not None and (not isinstance(tools, list) or not all(
                isinstance(t, dict) and isinstance(t.get("function"), dict)
                and isinstance(t["function"].get("name"), str) for t in tools)):
            raise RequestError(400, "tools must be a list of {'type': 'function', 'function': {'name', "
                                    "'parameters', ...}}", param="tools")
        choice = body.get("tool_choice")
        if choice not in (None, "auto", "none"):
            raise RequestError(400, "tool_choice must be 'auto' or 'none': a cm2 policy cannot be forced to call",
                               param="tool_choice")
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise RequestError(400, "metadata must be an object of strings", param="metadata")
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise RequestError(400, "seed must be an integer", param="seed")
        return body

    def _context(self, messages: list[dict[str, Any]], request: Mapping[str, Any]) -> dict[str, Any]:
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        context: dict[str, Any] = {
            "turn": max(len(users) - 1, 0),
            "action": sum(m["role"] == "assistant" for m in messages[(users[-1] + 1 if users else 0):]),
        }
        dialogue_id = (request.get("metadata") or {}).get("dialogue_id")
        first = (messages[users[0]].get("content") or "").strip() if users else ""
        if dialogue_id is None and users:
            dialogue_id = self._by_first_user.get(first)
        if self._known and dialogue_id is None:
            which = ("several bundled dialogues begin with this request's first user message: name one in "
                     "metadata.dialogue_id" if first in self._shared_first_user else
                     "this policy plays bundled dialogues and no bundled dialogue begins with this request's first "
                     "user message: send the dialogue's own first user message, or name it in metadata.dialogue_id")
            raise RequestError(400, which, param="messages", code="unknown_dialogue")
        if self._known and str(dialogue_id) not in self._known:
            raise RequestError(400, f"metadata.dialogue_id {str(dialogue_id)[:200]!r} is not a bundled dialogue of "
                               "this server (see the dataset it was started with)", param="metadata",
                               code="unknown_dialogue")
        if dialogue_id is not None:
            context["dialogue_id"] = str(dialogue_id)
        if request.get("seed") is not None:
            context["sampling_seed"] = int(request["seed"])
        return context

    def _response(self, step: AgentStep, native: bool) -> dict[str, Any]:
        parsed = parse(step.text)
        message: dict[str, Any] = {"role": "assistant"}
        if native and parsed.calls and not parsed.errors:
            calls = render_openai(parsed.calls)
            for call in calls:
                call["id"] = f"call_{uuid.uuid4().hex[:24]}"
            message.update(content=parsed.content or None, tool_calls=calls)
            if parsed.thinking:
                message["reasoning_content"] = parsed.thinking
            finish = "tool_calls"
        elif native:
            message["content"] = parsed.content if not parsed.errors else step.text
            if parsed.thinking and not parsed.errors:
                message["reasoning_content"] = parsed.thinking
            finish = "stop"
        else:
            message["content"] = step.text
            finish = "stop"
        if finish == "stop" and self._ran_out_of_tokens(step):
            finish = "length"
        usage = step.usage or {}
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        completion_tokens = int(usage.get("completion_tokens", 0))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def _ran_out_of_tokens(self, step: AgentStep) -> bool:
        eos = getattr(self.agent, "eos_id", None)
        budget = getattr(self.agent, "max_new_tokens", None)
        ids = step.completion_ids
        return bool(ids) and eos is not None and ids[-1] != eos and budget is not None and len(ids) >= budget


def _agent_message(message: dict[str, Any], index: int) -> dict[str, Any]:
    """A request message as the agents read it: text content, tool calls with JSON-string arguments."""
    out: dict[str, Any] = {"role": "system" if message["role"] == "developer" else message["role"]}
    content = message.get("content")
    if isinstance(content, list):  # content parts: the text ones
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if not all(isinstance(text, str) for text in texts):
            raise RequestError(400, f"messages[{index}].content: a text part's text must be a string",
                               param=f"messages[{index}].content")
        content = "".join(texts)
    elif content is not None and not isinstance(content, str):
        raise RequestError(400, f"messages[{index}].content must be a string or a list of content parts",
                           param=f"messages[{index}].content")
    out["content"] = content or ""
    if message["role"] == "assistant" and message.get("tool_calls"):
        calls = message["tool_calls"]
        if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("function"), dict)
                                                  for c in calls):
            raise RequestError(400, f"messages[{index}].tool_calls must be a list of function calls",
                               param=f"messages[{index}].tool_calls")
        out["tool_calls"] = [_agent_call(call) for call in calls]
    if message["role"] == "tool":
        out["tool_call_id"] = str(message.get("tool_call_id") or "")
        if message.get("name"):
            out["name"] = str(message["name"])
    return out


def _agent_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call["function"]
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return {"id": str(call.get("id") or ""), "type": "function",
            "function": {"name": str(function.get("name") or ""), "arguments": arguments}}


def _name_tool_messages(messages: list[dict[str, Any]]) -> None:
    """Give tool messages without ``name`` the name of the call they answer (OpenAI clients omit it)."""
    names = {call["id"]: call["function"]["name"] for m in messages for call in m.get("tool_calls") or []}
    for message in messages:
        if message["role"] == "tool" and "name" not in message and message["tool_call_id"] in names:
            message["name"] = names[message["tool_call_id"]]


def build_app(server: ChatServer) -> Any:
    """The Starlette app serving ``server``; the policy's clients are closed when the app shuts down."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def refuse(error: RequestError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    def authorised(request: Request) -> bool:
        if not server.api_key:
            return True
        given = request.headers.get("authorization", "").encode("utf-8", "replace")
        return hmac.compare_digest(given, f"Bearer {server.api_key}".encode("utf-8"))

    async def completions(request: Request) -> JSONResponse:
        started = time.perf_counter()
        status, calls, counts = 200, 0, "-"
        try:
            if not authorised(request):
                raise RequestError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                   kind="authentication_error", code="invalid_api_key")
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                raise RequestError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
            raw = await request.body()
            if len(raw) > MAX_BODY_BYTES:
                raise RequestError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError) as exc:
                raise RequestError(400, f"the request body is not JSON ({type(exc).__name__})") from None
            if isinstance(body, dict):
                counts = " ".join(f"{key}={len(body[key]) if isinstance(body.get(key), list) else '?'}"
                                  for key in ("messages", "tools"))
            answer = await server.complete(body)
            calls = len(answer["choices"][0]["message"].get("tool_calls") or [])
            return JSONResponse(answer)
        except RequestError as error:
            status = error.status
            return refuse(error)
        except Exception as exc:  # noqa: BLE001 - a policy failure is the client's 500, never the server's end
            # Only the type: an exception's message may quote the request (text, keys). The traceback is at
            # debug level, for whoever runs the server with logging turned up.
            status = 500
            log.debug("the policy raised on a request", exc_info=True)
            return refuse(RequestError(500, f"the policy raised {type(exc).__name__}", kind="server_error",
                                       code="policy_error"))
        finally:
            log.info("POST /v1/chat/completions %d %s calls=%d %.3fs", status, counts, calls,
                     time.perf_counter() - started)

    async def models(request: Request) -> JSONResponse:
        if not authorised(request):
            return refuse(RequestError(401, "missing or wrong API key", kind="authentication_error"))
        return JSONResponse({"object": "list", "data": [
            {"id": server.model_name, "object": "model", "created": server.created, "owned_by": "cm2"}]})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": server.model_name, "requests": server.requests})

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        yield
        closer = getattr(server.agent, "aclose", None)
        if closer is not None:
            await closer()

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"]),
                             Route("/health", health, methods=["GET"])], lifespan=lifespan)


def uvicorn_server(server: ChatServer, host: str = "127.0.0.1", port: int = 8000) -> Any:
    """A ``uvicorn.Server`` for ``server`` (its own access log off: the app logs one line per request). On
    SIGINT/SIGTERM it shuts down gracefully and returns, so the process exits with status 0 (uvicorn's own
    server raises the signal again after shutting down, which ends the process with the signal's status)."""
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            signals = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(build_app(server), host=host, port=port, log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=5)
    return Server(config)


def bound_url(http: Any) -> str:
    """``http://HOST:PORT/v1`` of a started uvicorn server (the real port when it was started on port 0)."""
    host, port = http.servers[0].sockets[0].getsockname()[:2]
    return f"http://{host}:{port}/v1"


@contextlib.contextmanager
def serve_in_thread(server: ChatServer, host: str = "127.0.0.1", port: int = 0,
                    start_timeout_s: float = 60.0) -> Iterator[str]:
    """Serve ``server`` from a background thread (its own event loop) and yield the base URL; stop on exit.
    For benchmark adapters and tests that need the policy behind HTTP inside one process."""
    http = uvicorn_server(server, host, port)  # off the main thread it installs no signal handlers
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(http.serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name="cm2-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not http.started:
        if failure or not thread.is_alive():
            why = f"{type(failure[0]).__name__}: {failure[0]}" if failure else "the server thread ended"
            raise RuntimeError(f"cm2 serve did not start on {host}:{port} ({why}; a port in use ends it so)")
        if time.monotonic() > deadline:
            http.should_exit = True
            raise RuntimeError(f"cm2 serve did not start within {start_timeout_s} s")
        time.sleep(0.01)
    try:
        yield bound_url(http)
    finally:
        http.should_exit = True
        thread.join(timeout=30)
