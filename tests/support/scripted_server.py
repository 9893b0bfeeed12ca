"""A scripted OpenAI-compatible HTTP server for tests (a test double of an external service, not product code).

Contract (tests and other helpers code against it):

- ``ScriptedServer(responder=None, *, latency_s=0.0, model="scripted")`` serves ``POST /v1/chat/completions``,
  ``POST /v1/completions`` (the same responder; text completions need it to return a whole body),
  ``GET /v1/models`` and ``GET /health`` on 127.0.0.1 (a free port) from a background thread. One thread per
  connection (HTTP/1.1 keep-alive), a deep listen backlog: hundreds of concurrent connections are fine.
  Use it as a context manager (``with ScriptedServer(...) as srv:``) or call ``.start()`` / ``.stop()``.
- ``srv.url`` -> ``"http://127.0.0.1:PORT/v1"``; ``srv.spec`` -> ``"openai:http://127.0.0.1:PORT/v1#scripted"``.
- ``srv.requests``: the JSON bodies of the chat requests received, in arrival order (appended under a lock);
  ``srv.headers``: their HTTP headers (lower-cased names), same order.
- ``responder(request) -> str | dict | Fault``: a ``str`` is the assistant ``content``; a ``dict`` is the
  assistant message (may hold ``tool_calls`` and ``content``); a dict with a ``"choices"`` key is sent verbatim as
  the whole response body. ``usage`` is filled in with whitespace token counts. The default responder echoes the
  last message's content. If the request asks for ``logprobs``, deterministic per-token logprobs are included.
  A responder that raises yields a 500 (so a test's bug shows up as a server error, not a hang).
- Faults: ``Fault.http(status, retry_after=None, *, message="")``, ``Fault.stall(seconds)`` (sleep, then answer normally),
  ``Fault.garbage(body="not json")`` (200 with a non-JSON body), ``Fault.empty()`` (200 with a completion whose
  ``choices`` list is empty). A responder may return a Fault; ``srv.fault_rate = (0.2, [faults...])`` injects a
  fault drawn uniformly from the list into that fraction of chat requests (seeded by ``srv.seed``), and
  ``srv.latency_s`` adds latency to every chat request; both can be changed at any time. In the fault list a plain
  string is accepted as shorthand: ``"500"``/``"503"``/... (an HTTP status), ``"429"`` (with Retry-After 0),
  ``"stall"`` (5 s), ``"garbage"``, ``"empty"``.
- ``srv.faults_injected``: a ``collections.Counter`` of the fault kinds actually served (``"http:500"``,
  ``"stall"``, ...), counting responder faults and random faults alike.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Responder = Callable[[dict[str, Any]], "str | dict[str, Any] | Fault"]


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour. Build with the class methods, not the constructor."""

    kind: str  # "http" | "stall" | "garbage" | "empty"
    status: int = 200
    retry_after: float | None = None
    seconds: float = 0.0
    body: str = ""
    message: str = ""

    @classmethod
    def http(cls, status: int, retry_after: float | None = None, *, message: str = "") -> "Fault":
        """An HTTP error status with an OpenAI-style error body (``message``, default "scripted fault: HTTP
        <status>") and a Retry-After header when ``retry_after`` is given."""
        return cls("http", status=status, retry_after=retry_after, message=message)

    @classmethod
    def stall(cls, seconds: float) -> "Fault":
        """Sleep ``seconds`` before answering normally (a client with a shorter timeout sees a timeout)."""
        return cls("stall", seconds=seconds)

    @classmethod
    def garbage(cls, body: str = "not json") -> "Fault":
        """Answer 200 with a body that is not JSON."""
        return cls("garbage", body=body)

    @classmethod
    def empty(cls) -> "Fault":
        """Answer 200 with a well-formed completion whose ``choices`` list is empty."""
        return cls("empty")

    @property
    def label(self) -> str:
        return f"http:{self.status}" if self.kind == "http" else self.kind


def _fault_from_shorthand(item: "Fault | str | int") -> Fault:
    if isinstance(item, Fault):
        return item
    text = str(item).strip().lower()
    if text.isdigit():
        status = int(text)
        return Fault.http(status, retry_after=0 if status == 429 else None)
    shorthands = {"stall": Fault.stall(5.0), "garbage": Fault.garbage(), "empty": Fault.empty()}
    if text not in shorthands:
        raise ValueError(f"unknown fault shorthand {item!r}: use a Fault, an HTTP status, 'stall', 'garbage' or 'empty'")
    return shorthands[text]


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def echo_last_message(request: dict[str, Any]) -> str:
    """The default responder: the content of the last message."""
    messages = request.get("messages") or [{}]
    return _message_text(messages[-1]) if isinstance(messages[-1], dict) else ""


def _token_count(text: str) -> int:
    return len(text.split())


def _logprobs_block(text: str, top_n: int) -> dict[str, Any]:
    """Deterministic OpenAI-shaped logprobs for the whitespace tokens of ``text``."""
    entries = []
    for index, token in enumerate(text.split()):
        logprob = -0.1 * (1 + index % 5)
        top = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
        top += [{"token": f"alt{k}", "logprob": logprob - k, "bytes": list(f"alt{k}".encode())} for k in range(1, top_n)]
        entries.append({"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": top[:top_n]})
    return {"content": entries, "refusal": None}


class ScriptedServer:
    """See the module docstring for the contract."""

    def __init__(self, responder: Responder | None = None, *, latency_s: float = 0.0, model: str = "scripted"):
        self.responder: Responder = responder or echo_last_message
        self.latency_s = latency_s
        self.model = model
        self.fault_rate: tuple[float, list[Fault | str | int]] | None = None
        self.seed = 0
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.faults_injected: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._rng: random.Random | None = None
        self._rng_seed: int | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._counter = 0
        self._port: int | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> "ScriptedServer":
        handler = _make_handler(self)
        httpd = _Server(("127.0.0.1", 0), handler)
        self._httpd = httpd
        self._port = int(httpd.server_address[1])
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"scripted-server-{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd = None

    def __enter__(self) -> "ScriptedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port; still readable after ``stop()`` (e.g. to point a client at a closed port)."""
        if self._port is None:
            raise RuntimeError("ScriptedServer is not started: call .start() or use it as a context manager")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def spec(self) -> str:
        return f"openai:{self.url}#{self.model}"

    # ----------------------------------------------------------------- request handling
    def _record(self, body: dict[str, Any], headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)

    def _random_fault(self) -> Fault | None:
        setting = self.fault_rate
        if not setting:
            return None
        rate, kinds = setting
        with self._lock:
            if self._rng is None or self._rng_seed != self.seed:
                self._rng, self._rng_seed = random.Random(self.seed), self.seed
            if not kinds or self._rng.random() >= rate:
                return None
            return _fault_from_shorthand(self._rng.choice(list(kinds)))

    def _next_id(self) -> str:
        with self._lock:
            self._counter += 1
            return f"chatcmpl-scripted-{self._counter}"

    def completion_body(self, request: dict[str, Any], reply: str | dict[str, Any]) -> dict[str, Any]:
        """The full chat.completion body for a responder's reply (``str`` or assistant-message ``dict``)."""
        if isinstance(reply, dict) and "choices" in reply:
            return reply
        message: dict[str, Any] = {"role": "assistant", "content": reply} if isinstance(reply, str) else {
            "role": "assistant", "content": None, **reply}
        content = message.get("content") or ""
        call_args = " ".join(str(c.get("function", {}).get("arguments", "")) for c in message.get("tool_calls") or [])
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        if request.get("logprobs"):
            choice["logprobs"] = _logprobs_block(content, int(request.get("top_logprobs") or 1))
        prompt_tokens = sum(_token_count(_message_text(m)) for m in request.get("messages") or [] if isinstance(m, dict))
        completion_tokens = _token_count(content) + _token_count(call_args)
        return {
            "id": self._next_id(), "object": "chat.completion", "created": int(time.time()),
            "model": request.get("model") or self.model, "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # stalled handlers must not block stop()
    request_queue_size = 1024  # the listen backlog: bursts of hundreds of connects must not be refused
    allow_reuse_address = True


def _make_handler(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a pooled client expects

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request logging
            pass

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _send(self, status: int, body: bytes, content_type: str = "application/json",
                  extra: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (e.g. after a stall); nothing to answer

        def _send_json(self, status: int, obj: Any, extra: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), extra=extra)

        def _send_error(self, status: int, message: str, extra: dict[str, str] | None = None) -> None:
            error_type = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
            self._send_json(status, {"error": {"message": message, "type": error_type, "code": status}}, extra)

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            path = self.path.split("?")[0].rstrip("/")
            if path in ("/health", "/v1/health"):
                self._send(200, b"", content_type="text/plain")
            elif path == "/v1/models":
                self._send_json(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
            else:
                self._send_error(404, f"no route {self.path}")

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path.split("?")[0].rstrip("/") not in ("/v1/chat/completions", "/v1/completions"):
                self._send_error(404, f"no route {self.path}")
                return
            try:
                request = json.loads(raw)
                if not isinstance(request, dict):
                    raise ValueError("body is not a JSON object")
            except ValueError as exc:
                self._send_error(400, f"request body is not a JSON object: {exc}")
                return
            server._record(request, {k.lower(): v for k, v in self.headers.items()})
            if server.latency_s:
                time.sleep(server.latency_s)
            fault = server._random_fault()
            reply: Any = None
            if fault is None:
                reply = self._call_responder(request)
                if reply is None:
                    return
                if isinstance(reply, Fault):
                    fault, reply = reply, echo_last_message(request)  # after a stall, the echo is the answer
            if fault is not None:
                with server._lock:
                    server.faults_injected[fault.label] += 1
                if self._serve_fault(fault, request):
                    return
                if reply is None:  # a random stall: the responder has not been asked yet
                    reply = self._call_responder(request)
                    if reply is None:
                        return
                    if isinstance(reply, Fault):
                        reply = echo_last_message(request)
            self._send_json(200, server.completion_body(request, reply))

        def _call_responder(self, request: dict[str, Any]) -> Any:
            """The responder's reply, or None after answering 500 because the responder raised."""
            try:
                return server.responder(request)
            except Exception as exc:  # a test's responder bug becomes a visible server error, not a hang
                self._send_error(500, f"responder raised {type(exc).__name__}: {exc}")
                return None

        def _serve_fault(self, fault: Fault, request: dict[str, Any]) -> bool:
            """Serve ``fault``; True when the response is complete, False when a normal answer must follow."""
            if fault.kind == "http":
                extra = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
                self._send_error(fault.status, fault.message or f"scripted fault: HTTP {fault.status}", extra)
                return True
            if fault.kind == "garbage":
                self._send(200, fault.body.encode(), content_type="application/json")
                return True
            if fault.kind == "empty":
                body = server.completion_body(request, "")
                body["choices"] = []
                self._send_json(200, body)
                return True
            time.sleep(fault.seconds)  # stall
            return False

    return Handler
