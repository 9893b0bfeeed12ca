"""Exceptions of the LLM access layer.

Every failure a caller can see after the client's last attempt is an ``LLMError``; the subclass says how the
call failed, and the message says which endpoint (URL and model, never the API key), for which role, after how
many attempts. ``LLMConfigError`` is raised up front for a bad spec string or option, before any request.
"""

from __future__ import annotations

from cm2_env.errors import SpecError


class LLMError(Exception):
    """A chat call failed. ``endpoint`` is the base URL, ``model`` the served model name, ``role`` the client's
    accounting role, ``attempts`` how many HTTP attempts were made, ``reason`` a short machine-readable kind
    (``"http_500"``, ``"timeout"``, ``"connection"``, ``"invalid_response"``, ...)."""

    def __init__(self, message: str, *, endpoint: str = "", model: str = "", role: str = "", attempts: int = 0,
                 reason: str = "") -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.model = model
        self.role = role
        self.attempts = attempts
        self.reason = reason


class LLMConfigError(LLMError, SpecError):
    """A spec string or client option is invalid (raised by ``make_client``, before any request); one of the
    project's :class:`~cm2_env.errors.SpecError` family."""


class LLMStatusError(LLMError):
    """The server answered with an HTTP error status (``status_code``): a 4xx that is not retried, or a
    retryable status (429, 5xx, 408, 409) on the last attempt."""

    def __init__(self, message: str, *, status_code: int, **context: object) -> None:
        super().__init__(message, **context)  # type: ignore[arg-type]
        self.status_code = status_code


class LLMRateLimitError(LLMStatusError):
    """HTTP 429 on the last attempt: raise ``max_retries``, lower ``max_concurrency`` or set ``rpm``/``tpm``."""


class LLMServerError(LLMStatusError):
    """HTTP 5xx on the last attempt."""


class LLMTimeoutError(LLMError):
    """No complete answer within ``timeout_s`` on the last attempt."""


class LLMConnectionError(LLMError):
    """The endpoint could not be reached (refused, reset, DNS) on the last attempt."""


class LLMInvalidResponseError(LLMError):
    """HTTP 200 whose body is not a valid chat completion (not JSON, no choices, no message) on the last attempt."""
