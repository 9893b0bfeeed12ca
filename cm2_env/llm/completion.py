"""The data of one chat call: the request body we send and the ``ChatResult`` we make of the server's answer.

Pure functions, no I/O. ``build_request`` makes the OpenAI chat-completions body (the same dict is the cache
key's input); ``parse_completion`` turns a decoded response body into a ``ChatResult`` or raises
``InvalidCompletion`` when the body is not a usable completion (not an object, no choices, no message) — the
client retries that like a server error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from cm2_env.llm.jsonx import extract_json


class InvalidCompletion(ValueError):
    """A 200 response whose body is not a valid chat completion; the message says what is missing."""


@dataclass
class ChatResult:
    """One assistant answer.

    text: the assistant content ("" when the model only called tools).
    tool_calls: OpenAI tool-call dicts (``{"id", "type": "function", "function": {"name", "arguments"}}``).
    finish_reason: "stop", "length", "tool_calls", ... as the server reported it (None if absent).
    usage: ``{"prompt_tokens", "completion_tokens", "total_tokens"}`` as the server reported them (0 if absent).
    latency_s: wall seconds from the first attempt to the answer, backoff included (0.0 for a cache hit).
    logprobs: the choice's per-token logprob entries (``{"token", "logprob", "top_logprobs", ...}``) when the
        request asked for ``logprobs``, else None.
    parsed: ``extract_json(text)`` when the call asked for structured output (``response_format``), else None.
    raw: the whole decoded response body. endpoint: the base URL that answered ("" for a cache hit).
    attempts: HTTP attempts made (0 for a cache hit). cached: answered from the response cache.
    """

    text: str
    tool_calls: list[dict[str, Any]]
    finish_reason: str | None
    usage: dict[str, int]
    latency_s: float = 0.0
    logprobs: list[dict[str, Any]] | None = None
    parsed: Any = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    endpoint: str = ""
    attempts: int = 0
    cached: bool = False

    @property
    def message(self) -> dict[str, Any]:
        """The answer as an OpenAI assistant message (``content`` and, if any, ``tool_calls``)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return message

    @property
    def token_logprobs(self) -> list[float] | None:
        """The sampled tokens' log-probabilities, in order, when logprobs were asked for."""
        if self.logprobs is None:
            return None
        return [float(entry.get("logprob", 0.0)) for entry in self.logprobs]


def normalize_response_format(response_format: Any) -> dict[str, Any] | None:
    """An OpenAI ``response_format`` dict from what a caller passed: None; an OpenAI dict (``{"type": ...}``,
    passed through); a bare JSON schema dict; or a pydantic model class (its JSON schema)."""
    if response_format is None:
        return None
    if isinstance(response_format, type) and hasattr(response_format, "model_json_schema"):
        return {"type": "json_schema", "json_schema": {"name": response_format.__name__,
                                                       "schema": response_format.model_json_schema()}}
    if not isinstance(response_format, dict):
        raise TypeError(f"response_format must be a dict, a JSON schema or a pydantic model class, "
                        f"got {type(response_format).__name__}")
    if response_format.get("type") in ("json_schema", "json_object", "text"):
        return response_format
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": response_format}}


def build_request(model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                  response_format: dict[str, Any] | None, sampling: dict[str, Any]) -> dict[str, Any]:
    """The chat-completions request body. ``sampling`` holds every other body field (temperature, max_tokens,
    logprobs, seed, vLLM extras such as top_k...), sent as given."""
    request: dict[str, Any] = {"model": model, "messages": messages, **sampling}
    if tools:
        request["tools"] = tools
    if response_format is not None:
        request["response_format"] = response_format
    return request


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise InvalidCompletion(problem)


def _first_choice(body: Any) -> dict[str, Any]:
    """Choice 0 of a completion body (chat or text), or ``InvalidCompletion``."""
    _require(isinstance(body, dict), f"body is a {type(body).__name__}, not a JSON object")
    if "error" in body and "choices" not in body:
        raise InvalidCompletion(f"body is an error object: {str(body['error'])[:300]}")
    choices = body.get("choices")
    _require(isinstance(choices, list) and len(choices) > 0, "body has no choices")
    _require(isinstance(choices[0], dict), "choice 0 is not an object")
    return choices[0]


def _count(value: Any) -> int:
    """A reported token count as an int; 0 for anything that is not a sane non-negative number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    try:
        count = int(value)
    except (OverflowError, ValueError):
        return 0
    return count if 0 <= count < 2**53 else 0


def _usage(body: dict[str, Any]) -> dict[str, int]:
    """The token counts the server reported (0 where absent; total = prompt + completion when missing)."""
    reported = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    usage = {name: _count(reported.get(name)) for name in ("prompt_tokens", "completion_tokens", "total_tokens")}
    if not usage["total_tokens"]:
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


def parse_completion(body: Any, *, structured: bool) -> ChatResult:
    """The ``ChatResult`` of a decoded chat.completion ``body`` (choice 0). Raises ``InvalidCompletion``."""
    choice = _first_choice(body)
    _require(isinstance(choice.get("message"), dict), "choice 0 has no message")
    message = choice["message"]
    content = message.get("content")
    _require(content is None or isinstance(content, str), "message content is not a string")
    tool_calls = message.get("tool_calls") or []
    _require(isinstance(tool_calls, list) and all(isinstance(c, dict) for c in tool_calls),
             "message tool_calls is not a list of objects")
    _require(bool(content) or bool(tool_calls) or choice.get("finish_reason") is not None,
             "message has neither content nor tool calls nor a finish reason")
    usage = _usage(body)
    logprobs_block = choice.get("logprobs")
    logprobs = logprobs_block.get("content") if isinstance(logprobs_block, dict) else None
    text = content or ""
    return ChatResult(text=text, tool_calls=tool_calls, finish_reason=choice.get("finish_reason"), usage=usage,
                      logprobs=logprobs if isinstance(logprobs, list) else None,
                      parsed=extract_json(text) if structured else None, raw=body)


def _logprob(value: Any) -> float | None:
    """``value`` as a log-probability, or None when it is not a finite number <= 0 (rounding slack 1e-6)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and number <= 1e-6 else None


def parse_text_completion(body: Any, *, structured: bool = False) -> ChatResult:
    """The ``ChatResult`` of a decoded text_completion ``body`` (``/completions``, choice 0): ``text`` is the
    choice's text, ``tool_calls`` empty, ``logprobs`` one ``{"token", "logprob"}`` entry per generated token when
    the request asked for ``logprobs``. vLLM's ``token_ids`` (asked for with ``return_token_ids``) stay in
    ``raw``. Raises ``InvalidCompletion``."""
    choice = _first_choice(body)
    _require(isinstance(choice.get("text", ""), str), "choice 0 has no text")
    usage = _usage(body)
    block = choice.get("logprobs")
    logprobs = None
    if isinstance(block, dict) and isinstance(block.get("token_logprobs"), list):
        tokens = block.get("tokens") if isinstance(block.get("tokens"), list) else []
        values = [_logprob(v) for v in block["token_logprobs"]]
        _require(all(v is not None for v in values),
                 "logprobs.token_logprobs holds something other than a finite log-probability (a number <= 0)")
        logprobs = [{"token": tokens[i] if i < len(tokens) else "", "logprob": v} for i, v in enumerate(values)]
    return ChatResult(text=choice.get("text") or "", tool_calls=[], finish_reason=choice.get("finish_reason"),
                      usage=usage, logprobs=logprobs, raw=body)
