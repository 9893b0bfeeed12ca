"""The LLM access layer: one async OpenAI-compatible client for every LLM call of the project.

    from cm2_env.llm import make_client
    client = make_client("openai:http://127.0.0.1:8000/v1#Qwen3-8B", role="judge", max_concurrency=32)
    result = await client.chat(messages, tools=tools, temperature=0)
    result.text, result.tool_calls, result.finish_reason, result.usage, result.latency_s, result.logprobs
    client.usage()  # {"judge": {"calls", "retries", "failures", "prompt_tokens", ..., "latency_s": {...}}}

Spec strings: ``cm2_env.llm.spec``; retries, routing, limits and the cache: ``cm2_env.llm.client``; the only
"JSON out of LLM text" parser: ``extract_json``. See docs/llm.md. Imports are light (no torch; the openai SDK is
imported on first use of a client).
"""

from cm2_env.llm.cache import ResponseCache, request_key
from cm2_env.llm.client import ChatClient, ClientOptions, make_client
from cm2_env.llm.completion import ChatResult
from cm2_env.llm.errors import (LLMConfigError, LLMConnectionError, LLMError, LLMInvalidResponseError,
                                LLMRateLimitError, LLMServerError, LLMStatusError, LLMTimeoutError)
from cm2_env.llm.jsonx import extract_json
from cm2_env.llm.spec import ChatSpec, parse_spec
from cm2_env.llm.usage import UsageTracker

__all__ = [
    "ChatClient", "ChatResult", "ChatSpec", "ClientOptions", "LLMConfigError", "LLMConnectionError", "LLMError",
    "LLMInvalidResponseError", "LLMRateLimitError", "LLMServerError", "LLMStatusError", "LLMTimeoutError",
    "ResponseCache", "UsageTracker", "extract_json", "make_client", "parse_spec", "request_key",
]
