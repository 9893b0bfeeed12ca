"""Spec strings: one line of text that names an OpenAI-compatible model behind one or more endpoints.

Grammar::

    [PROVIDER:]URL[,URL...]#MODEL[?OPTION=VALUE[&OPTION=VALUE...]]

- ``PROVIDER`` is ``openai`` (default), ``vllm`` or ``sglang``: all speak the OpenAI chat-completions API, the
  name only documents what serves the model.
- ``URL`` is an ``http(s)://`` base URL ending where the API's ``/chat/completions`` is appended (usually
  ``.../v1``). Several comma-separated URLs serve the same model; the client routes each request to the one with
  the fewest requests in flight. No URL (``openai:#gpt-4o-mini``) means ``$OPENAI_BASE_URL`` or the OpenAI API.
- ``MODEL`` is the served model name sent in each request (may contain ``/`` and ``:``).
- Options (all optional): ``key_env`` (the environment variable holding the API key), ``max_concurrency``,
  ``timeout_s``, ``max_retries``, ``rpm``, ``tpm``. Keyword options given to ``make_client`` win over these.

Secrets never appear in a spec: an API key option or a ``user:password@`` URL is rejected, because specs are
written to logs and run directories. Examples::

    openai:http://127.0.0.1:8000/v1#Qwen3-30B-A3B
    vllm:http://10.0.0.1:8000/v1,http://10.0.0.2:8000/v1#Qwen/Qwen3-8B?max_concurrency=128
    openai:https://api.openai.com/v1#gpt-4o-mini?key_env=JUDGE_API_KEY&rpm=500
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cm2_env.llm.errors import LLMConfigError

PROVIDERS = ("openai", "vllm", "sglang")
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
# Options a spec may carry, with their types. API keys are deliberately absent.
SPEC_OPTIONS: dict[str, type] = {
    "key_env": str, "max_concurrency": int, "timeout_s": float, "max_retries": int, "rpm": float, "tpm": float,
}
_SECRET_OPTION = re.compile(r"(api_?key|token|secret|password)$", re.IGNORECASE)


@dataclass(frozen=True)
class ChatSpec:
    """A parsed spec string: ``provider``, the endpoint ``urls`` (no trailing slash), the served ``model`` and the
    ``options`` the spec carried (typed per ``SPEC_OPTIONS``). ``str(spec)`` gives the canonical spec string."""

    provider: str
    urls: tuple[str, ...]
    model: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        query = "&".join(f"{key}={value}" for key, value in sorted(self.options.items()))
        return f"{self.provider}:{','.join(self.urls)}#{self.model}" + (f"?{query}" if query else "")


def redact(spec: str) -> str:
    """``spec`` with what could be a secret masked: URL credentials (``user:pass@``) and the values of options
    whose names look like keys or tokens. Error messages show only this form."""
    text = re.sub(r"(://)[^/@\s]*@", r"\1***@", str(spec))
    return re.sub(r"([?&][^=&#\s]*(?:key|token|secret|password|auth)[^=&#\s]*=)[^&#\s]*", r"\1***", text,
                  flags=re.IGNORECASE)


def looks_like_llm_spec(spec: str) -> bool:
    """Whether ``spec`` is meant as an LLM spec (it names a model with '#', a URL, or a provider prefix), as
    opposed to a misspelt name such as 'rulee': the factories use it to list the valid choices instead."""
    text = spec.strip()
    return "#" in text or "://" in text or text.partition(":")[0].lower() in PROVIDERS


def _fail(spec: str, problem: str, fix: str) -> LLMConfigError:
    return LLMConfigError(f"invalid LLM spec {redact(spec)!r}: {problem}. Fix: {fix}. Form: "
                          "[openai|vllm|sglang:]URL[,URL...]#MODEL[?option=value&...]")


def _parse_url(spec: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _fail(spec, f"endpoint {redact(url)!r} is not an http(s) URL", "write e.g. http://127.0.0.1:8000/v1")
    if "@" in parts.netloc:
        raise _fail(spec, "an endpoint URL holds credentials (user:password@)",
                    "remove them and pass the key with api_key= or an environment variable (key_env=VAR)")
    return url.rstrip("/")


def _parse_options(spec: str, query: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if _SECRET_OPTION.search(key):
            raise _fail(spec, f"option {key!r} would put a secret into a spec string",
                        "pass api_key= to make_client, or name the environment variable with key_env=VAR")
        if key not in SPEC_OPTIONS:
            raise _fail(spec, f"unknown option {key!r}", f"use one of {', '.join(SPEC_OPTIONS)}")
        try:
            options[key] = SPEC_OPTIONS[key](value)
        except ValueError:
            raise _fail(spec, f"option {key}={value!r} is not a {SPEC_OPTIONS[key].__name__}",
                        "give a number") from None
    return options


def parse_spec(spec: str) -> ChatSpec:
    """Parse a spec string (grammar in the module docstring). Raises ``LLMConfigError`` naming the problem."""
    if not isinstance(spec, str) or not spec.strip():
        raise _fail(str(spec), "the spec is empty", "write e.g. openai:http://127.0.0.1:8000/v1#my-model")
    text = spec.strip()
    provider = "openai"
    head, sep, rest = text.partition(":")
    if sep and head.lower() in PROVIDERS:
        provider, text = head.lower(), rest
    urls_part, sep, model_part = text.partition("#")
    if not sep:
        raise _fail(spec, "no model name", "append #MODEL, the served model name")
    model, _, query = model_part.partition("?")
    model = model.strip()
    if not model:
        raise _fail(spec, "the model name after '#' is empty", "append #MODEL, the served model name")
    raw_urls = [u.strip() for u in urls_part.split(",") if u.strip()]
    if not raw_urls:
        raw_urls = [os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_URL]
    urls = tuple(_parse_url(spec, url) for url in raw_urls)
    if len(set(urls)) != len(urls):
        raise _fail(spec, "an endpoint URL is listed twice", "list each URL once")
    return ChatSpec(provider=provider, urls=urls, model=model, options=_parse_options(spec, query))
