"""``ChatClient``: every LLM call of the project goes through one of these.

Contract: ``make_client(spec, role=..., **options)`` builds a client for one model behind one or more
OpenAI-compatible endpoints (spec grammar in ``cm2_env.llm.spec``). ``await client.chat(messages, tools=...,
response_format=..., **sampling)`` returns a ``ChatResult`` or, after the last attempt, raises an ``LLMError``
subclass naming the endpoint, the role and what went wrong; ``await client.complete(prompt, **sampling)`` does the
same for a text completion (``/completions``, a string or token ids). Per call:

1. the response cache is consulted (when configured, and the call is at temperature 0 or
   ``cache_any_temperature``); a hit returns without contacting any server;
2. each attempt takes the client's ``rpm``/``tpm`` budget, then a slot on an endpoint (``EndpointPool`` in
   ``cm2_env.llm.routing``: fewest in flight among endpoints with a free slot of ``max_concurrency``, ties
   rotate, recently failing endpoints cool down), then has ``timeout_s`` seconds;
3. connection errors, timeouts, HTTP 408/409/429/5xx and 200s whose body is not a valid completion are retried up
   to ``max_retries`` times with exponential backoff and jitter (at least the server's Retry-After); other 4xx
   fail at once. Circuit breaker: once every endpoint has been unreachable ``breaker_failures`` times in a row
   (connection errors, timeouts, 502/503/504) without answering anything for ``breaker_window_s``, calls fail
   at once with ``LLMConnectionError`` (counted as
   ``circuit_open`` in usage) until an endpoint's cooldown ends and a probe gets through -- a dead server
   costs seconds, not every caller's full retry schedule. A 400 that rejects ``response_format`` marks the endpoint as lacking structured output and the
   request is resent without it (the answer is then parsed by ``extract_json``).

The SDK's own retries are off (``max_retries=0``): this loop is the only one, so usage counts every attempt.
One ``AsyncOpenAI`` per endpoint, created lazily inside the running event loop (and again if the client is later
used from another loop, e.g. successive ``asyncio.run`` calls). API keys come from ``api_key=`` or environment
variables and never appear in ``repr``, logs, errors or usage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from cm2_env.llm.cache import ResponseCache, request_key
from cm2_env.llm.completion import ChatResult, InvalidCompletion, build_request, normalize_response_format, \
    parse_completion, parse_text_completion
from cm2_env.llm.errors import LLMConfigError, LLMConnectionError, LLMError, LLMInvalidResponseError, \
    LLMRateLimitError, LLMServerError, LLMStatusError, LLMTimeoutError
from cm2_env.llm.limits import TokenBucket
from cm2_env.llm.routing import Endpoint, EndpointPool
from cm2_env.llm.spec import ChatSpec, parse_spec
from cm2_env.llm.usage import UsageTracker

logger = logging.getLogger("cm2_env.llm")

API_KEY_ENV_VARS = ("CM2_API_KEY", "OPENAI_API_KEY")
RETRYABLE_STATUS = frozenset({408, 409, 429})
_STRUCTURED_OUTPUT_REJECTED = re.compile(r"response_format|json_schema|guided|structured", re.IGNORECASE)
_timeout = asyncio.timeout if sys.version_info >= (3, 11) else None
CHAT_PATH, COMPLETIONS_PATH = "/chat/completions", "/completions"
_PARSERS = {CHAT_PATH: parse_completion, COMPLETIONS_PATH: parse_text_completion}


@dataclass(frozen=True)
class ClientOptions:
    """Every knob of a client, with its default. Units: seconds, requests or tokens per minute.

    role: the usage-accounting role ("policy", "simulator", "judge", "annotator", ...).
    max_concurrency: requests in flight per endpoint. timeout_s: per attempt. max_retries: attempts after the
    first. backoff_base_s / backoff_max_s: retry ``n`` sleeps ~``base * 2**(n-1)`` (jittered to 50-100%), capped;
    never less than the server's Retry-After (capped at ``retry_after_max_s``). rpm / tpm: client-wide limits
    (None = unlimited). cache: sqlite path (None = no cache). cache_any_temperature: cache every call, not only
    temperature-0 ones. sampling: default body fields merged under each call's ``**sampling``.
    """

    role: str = "policy"
    max_concurrency: int = 64
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0
    rpm: float | None = None
    tpm: float | None = None
    cache: str | Path | None = None
    cache_any_temperature: bool = False
    sampling: dict[str, Any] | None = None
    breaker_failures: int = 5
    breaker_window_s: float = 5.0


class _Attempt(Exception):
    """One failed attempt: ``reason`` ("http_503", "timeout", ...), whether to retry, the server's Retry-After."""

    def __init__(self, reason: str, detail: str, *, retryable: bool, status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.retryable = reason, detail, retryable
        self.status, self.retry_after_s = status, retry_after_s
        self.endpoint_url = ""


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date), or None."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                continue
    return None


def _httpx_module() -> Any:
    """The HTTP library under the installed SDK (``httpx2`` in openai 3.x, ``httpx`` before)."""
    try:
        import httpx2

        return httpx2
    except ImportError:
        import httpx

        return httpx


#: Connections per SDK client (HTTP pool) of an endpoint; an endpoint gets max_concurrency / this many pools.
SDK_POOL_CONNECTIONS = 16


_SSL_CONTEXTS: dict[tuple[Any, ...], Any] = {}


def _ssl_context(httpx: Any) -> Any:
    """One verifying SSL context per process (and CA settings), shared by every SDK client: each httpx client
    would otherwise build its own from the CA bundle (~50 ms each, on the event loop, at the first call)."""
    key = (httpx.__name__, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    if key not in _SSL_CONTEXTS:
        _SSL_CONTEXTS[key] = httpx.create_ssl_context()
    return _SSL_CONTEXTS[key]


class ChatClient:
    """See the module docstring. Build with ``make_client``."""

    def __init__(self, spec: ChatSpec, options: ClientOptions, api_key: str, usage: UsageTracker) -> None:
        self.spec = spec
        self.model = spec.model
        self.role = options.role
        self.options = options
        self._api_key = api_key
        self._usage = usage
        self._pool = EndpointPool(spec.urls, options.max_concurrency, max_cooldown_s=options.backoff_max_s)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rpm = TokenBucket(options.rpm) if options.rpm else None
        self._tpm = TokenBucket(options.tpm) if options.tpm else None
        self._cache = ResponseCache(options.cache) if options.cache else None
        self._sampling = dict(options.sampling or {})
        self._jitter = random.Random()
        self._httpx: Any = None

    def __repr__(self) -> str:
        return f"ChatClient(spec={str(self.spec)!r}, role={self.role!r})"

    # ------------------------------------------------------------------ public API
    def usage(self) -> dict[str, dict[str, Any]]:
        """Per-role accounting of this client's tracker (shared with other clients given the same ``usage=``)."""
        return self._usage.as_dict()

    @property
    def endpoints(self) -> list[str]:
        return [endpoint.url for endpoint in self._pool.endpoints]

    async def chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                   response_format: Any = None, **sampling: Any) -> ChatResult:
        """One chat completion (module docstring). ``sampling``: any other request-body field (temperature,
        max_tokens, logprobs, top_logprobs, seed, stop, tool_choice, vLLM extras...), over the client defaults."""
        format_dict = normalize_response_format(response_format)
        request = build_request(self.model, messages, tools, format_dict, {**self._sampling, **sampling})
        return await self._call(request, CHAT_PATH, structured=format_dict is not None)

    async def complete(self, prompt: list[int] | str, **sampling: Any) -> ChatResult:
        """One text completion (``/completions``) of ``prompt`` -- token ids or a string -- with the same
        routing, retries, budgets and usage as :meth:`chat`. Token-level rollouts use it: the trainer renders the
        prompt ids itself and asks vLLM for ``return_token_ids`` and ``logprobs``
        (:func:`cm2_env.llm.completion.parse_text_completion` says what comes back)."""
        request = {"model": self.model, "prompt": prompt, **self._sampling, **sampling}
        return await self._call(request, COMPLETIONS_PATH, structured=False)

    async def _call(self, request: dict[str, Any], path: str, *, structured: bool) -> ChatResult:
        """The cache, the attempts and the accounting of one call (module docstring) to ``path``."""
        self._bind_loop()
        role = self._usage.role(self.role)
        role.calls += 1
        cache_key = None
        if self._cache is not None and (self.options.cache_any_temperature or request.get("temperature") == 0):
            cache_key = request_key({**request, "path": path}) if path != CHAT_PATH else request_key(request)
            body = self._cache.get(cache_key)
            if body is not None:
                try:
                    result = _PARSERS[path](body, structured=structured)
                    role.cache_hits += 1
                    result.cached = True
                    return result
                except InvalidCompletion:
                    pass  # a corrupt entry: ask the server and overwrite it
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            if self._pool.all_down(self.options.breaker_failures, self.options.breaker_window_s):
                role.failures += 1
                role.circuit_open += 1
                urls = ", ".join(e.url for e in self._pool.endpoints)
                raise LLMConnectionError(
                    f"{self.role} endpoint(s) {urls} are down: unreachable {self.options.breaker_failures} times in a "
                    "row (circuit open); failing at once until one answers again",
                    endpoint=urls, model=self.model, role=self.role, attempts=attempt - 1)
            role.requests += 1
            try:
                endpoint, result = await self._attempt(request, path, structured=structured)
            except _Attempt as failure:
                if failure.reason == "structured_output_unsupported":
                    role.retries += 1
                    role.retry_reasons[failure.reason] += 1
                    continue  # resend at once without response_format
                if not failure.retryable or attempt > self.options.max_retries:
                    role.failures += 1
                    raise self._final_error(failure.endpoint_url, attempt, failure) from None
                delay = self._backoff_s(attempt, failure.retry_after_s)
                role.retries += 1
                role.retry_reasons[failure.reason] += 1
                logger.debug("%s call to %s failed (%s), retry %d/%d in %.2fs", self.role, failure.endpoint_url,
                             failure.reason, attempt, self.options.max_retries, delay)
                await asyncio.sleep(delay)
                continue
            result.latency_s = time.perf_counter() - started
            result.endpoint, result.attempts = endpoint.url, attempt
            role.prompt_tokens += result.usage["prompt_tokens"]
            role.completion_tokens += result.usage["completion_tokens"]
            role.latencies_s.append(result.latency_s)
            if cache_key is not None:
                self._cache.put(cache_key, result.raw)  # type: ignore[union-attr]
            return result

    async def aclose(self) -> None:
        """Close the HTTP connection pools (and the cache). The client must not be used afterwards."""
        for endpoint in self._pool.endpoints:
            for sdk in endpoint.sdks:
                await sdk.close()
            endpoint.sdks = []
        if self._cache is not None:
            self._cache.close()

    async def __aenter__(self) -> "ChatClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ one attempt
    def _bind_loop(self) -> None:
        """(Re)create per-loop state: SDK clients and semaphores belong to the event loop that uses them."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        httpx = _httpx_module()
        timeout = httpx.Timeout(self.options.timeout_s, connect=min(10.0, self.options.timeout_s))
        # httpx's connection pool scans all of its connections on every request and release, so one pool of 64+
        # connections costs ~1-2 ms of CPU per request at full concurrency; several small pools per endpoint
        # (used round-robin) keep that scan short.
        per_pool = min(self.options.max_concurrency, SDK_POOL_CONNECTIONS)
        pools = -(-self.options.max_concurrency // per_pool)
        limits = httpx.Limits(max_connections=2 * per_pool, max_keepalive_connections=per_pool)
        for endpoint in self._pool.endpoints:
            endpoint.sdks = [
                AsyncOpenAI(api_key=self._api_key, base_url=endpoint.url, max_retries=0, timeout=timeout,
                            http_client=DefaultAsyncHttpxClient(limits=limits, timeout=timeout,
                                                                verify=_ssl_context(httpx)))
                for _ in range(pools)
            ]
        self._pool.reset()
        self._httpx = httpx
        self._loop = loop

    async def _attempt(self, request: dict[str, Any], path: str, *,
                       structured: bool) -> tuple[Endpoint, ChatResult]:
        """Send ``request`` once to ``path``, at the endpoint the pool picks; that endpoint and the result, or raise
        ``_Attempt`` (with ``endpoint_url`` set). The rpm/tpm budget is taken before a slot is held."""
        estimate = await self._take_budget(request)
        endpoint = await self._pool.acquire()
        endpoint_failed = unreachable = False
        try:
            body = await self._send(endpoint, request, path)
            if self._tpm is not None and isinstance(body, dict) and isinstance(body.get("usage"), dict):
                self._tpm.adjust(int(body["usage"].get("total_tokens") or 0) - estimate)
            return endpoint, self._parse(body, path, structured)
        except _Attempt as failure:
            failure.endpoint_url = endpoint.url
            endpoint_failed = failure.retryable and failure.reason != "structured_output_unsupported"
            unreachable = failure.reason in ("connection", "timeout") or failure.status in (502, 503, 504)
            raise
        finally:
            self._pool.release(endpoint, failed=endpoint_failed, unreachable=unreachable)

    async def _take_budget(self, request: dict[str, Any]) -> int:
        estimate = 0
        if self._rpm is not None:
            await self._rpm.acquire(1)
        if self._tpm is not None:  # ~4 characters a token, plus the completion budget the request reserves
            prompt = request.get("prompt")
            estimate = (len(prompt) if isinstance(prompt, list)  # token ids: exact
                        else len(json.dumps(request.get("messages", prompt), default=str)) // 4)
            estimate += int(request.get("max_completion_tokens") or request.get("max_tokens") or 0)
            await self._tpm.acquire(estimate)
        return estimate

    async def _send(self, endpoint: Endpoint, request: dict[str, Any], path: str) -> Any:
        import openai

        body = dict(request)
        if not endpoint.structured_output:
            body.pop("response_format", None)
        try:
            # post() sends the body as JSON without the SDK's per-call type transform of the parameters, which
            # walks every message and tool schema (several ms per call for tool-heavy prompts); status errors,
            # auth and connection handling stay the SDK's.
            call = endpoint.next_sdk().post(path, body=body, cast_to=self._httpx.Response)
            if _timeout is not None:
                async with _timeout(self.options.timeout_s):
                    raw = await call
            else:  # Python 3.10
                raw = await asyncio.wait_for(call, self.options.timeout_s)
            content = raw.content
        except (asyncio.TimeoutError, openai.APITimeoutError):
            raise _Attempt("timeout", f"no answer within {self.options.timeout_s:g} s", retryable=True) from None
        except openai.APIConnectionError as exc:
            raise _Attempt("connection", f"{type(exc).__name__}: {exc}", retryable=True) from None
        except openai.APIStatusError as exc:
            status = exc.status_code
            detail = f"HTTP {status}: {self._scrub(str(exc.message))[:500]}"
            if status == 400 and "response_format" in body and _STRUCTURED_OUTPUT_REJECTED.search(detail):
                endpoint.structured_output = False
                raise _Attempt("structured_output_unsupported", detail, retryable=True, status=status) from None
            retryable = status in RETRYABLE_STATUS or status >= 500
            raise _Attempt(f"http_{status}", detail, retryable=retryable, status=status,
                           retry_after_s=parse_retry_after(exc.response.headers)) from None
        except openai.APIError as exc:  # anything else the SDK raises about the response
            raise _Attempt("invalid_response", f"{type(exc).__name__}: {exc}", retryable=True) from None
        try:
            return json.loads(content)
        except (ValueError, RecursionError):
            snippet = content[:120].decode("utf-8", errors="replace")
            raise _Attempt("invalid_response", f"HTTP 200 body is not JSON: {snippet!r}", retryable=True) from None

    @staticmethod
    def _parse(body: Any, path: str, structured: bool) -> ChatResult:
        try:
            return _PARSERS[path](body, structured=structured)
        except InvalidCompletion as exc:
            raise _Attempt("invalid_response", f"HTTP 200 body is not a valid completion: {exc}",
                           retryable=True) from None

    # ------------------------------------------------------------------ retries and errors
    def _backoff_s(self, attempt: int, retry_after_s: float | None) -> float:
        base = min(self.options.backoff_max_s, self.options.backoff_base_s * 2 ** (attempt - 1))
        delay = base * (0.5 + 0.5 * self._jitter.random())
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.options.retry_after_max_s))
        return delay

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key and len(self._api_key) >= 4 else text

    def _final_error(self, endpoint_url: str, attempts: int, failure: _Attempt) -> LLMError:
        message = (f"{self.role} call to {endpoint_url} (model {self.model}) failed after {attempts} attempt(s): "
                   f"{failure.reason}: {self._scrub(failure.detail)}")
        if not failure.retryable:
            message += " (not retried: fix the request)"
        context = {"endpoint": endpoint_url, "model": self.model, "role": self.role, "attempts": attempts,
                   "reason": failure.reason}
        if failure.status is not None:
            kind = LLMRateLimitError if failure.status == 429 else LLMServerError if failure.status >= 500 \
                else LLMStatusError
            return kind(message, status_code=failure.status, **context)
        kind = {"timeout": LLMTimeoutError, "connection": LLMConnectionError}.get(failure.reason,
                                                                                  LLMInvalidResponseError)
        return kind(message, **context)


def resolve_api_key(explicit: str | None, key_env: str | None) -> str:
    """The API key for an endpoint: ``explicit``, else the variable named by ``key_env``, else ``$CM2_API_KEY``,
    else ``$OPENAI_API_KEY``, else a placeholder for keyless local servers. Raises ``LLMConfigError`` when
    ``key_env`` names an unset variable."""
    if explicit:
        return explicit
    if key_env:
        value = os.environ.get(key_env)
        if not value:
            raise LLMConfigError(f"the API key variable {key_env!r} (named by key_env) is not set. "
                                 f"Fix: export {key_env}=... or pass api_key= to make_client")
        return value
    for name in API_KEY_ENV_VARS:
        if os.environ.get(name):
            return os.environ[name]
    return "EMPTY"  # local vLLM/SGLang servers need no key, but the SDK requires a non-empty one


def make_client(spec: str, *, role: str = "policy", api_key: str | None = None, key_env: str | None = None,
                usage: UsageTracker | None = None, **options: Any) -> ChatClient:
    """A ``ChatClient`` for ``spec`` (see ``cm2_env.llm.spec``). ``options`` are ``ClientOptions`` fields
    (``max_concurrency``, ``timeout_s``, ``max_retries``, ``rpm``, ``tpm``, ``cache``, ...); they override the
    spec's own options. The API key is ``api_key``, else the variable named by ``key_env`` (option or spec), else
    ``$CM2_API_KEY``, else ``$OPENAI_API_KEY``, else a placeholder for keyless local servers."""
    parsed = parse_spec(spec)
    merged = {**parsed.options, **options, "role": role}
    key_env = key_env or merged.pop("key_env", None)
    merged.pop("key_env", None)
    known = set(ClientOptions.__dataclass_fields__)
    unknown = sorted(set(merged) - known)
    if unknown:
        raise LLMConfigError(f"unknown make_client option(s) {unknown}: use {sorted(known)}")
    client_options = ClientOptions(**merged)
    if client_options.max_concurrency < 1 or client_options.max_retries < 0 or client_options.timeout_s <= 0:
        raise LLMConfigError(f"invalid options for {parsed}: need max_concurrency >= 1, max_retries >= 0, "
                             f"timeout_s > 0 (got {client_options.max_concurrency}, {client_options.max_retries}, "
                             f"{client_options.timeout_s})")
    return ChatClient(parsed, client_options, resolve_api_key(api_key, key_env), usage or UsageTracker())
