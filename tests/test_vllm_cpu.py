"""Integration: the client against a REAL vLLM server on the CPU serving a tiny random Qwen3-shaped model.

Needs the separate venv made by ``scripts/setup_vllm_cpu.sh`` (``$CM2_VLLM_PYTHON``, default
``.venv-vllm/bin/python``); skips with a reason when it is absent. The model comes from ``$CM2_TINY_VLLM_MODEL``
(default ``.cache/tiny-vllm``) or is built offline into a temporary folder. The server (tests/conftest.py) takes ~45 s to
start, once per session. A random model emits garbage, so the checks are about the protocol (shapes, counts, logprobs, tools
reaching the prompt, errors), not about quality.
"""

from __future__ import annotations

import asyncio

import pytest

from cm2_env.llm import LLMStatusError, make_client
from tests.conftest import SERVED_NAME

pytestmark = [pytest.mark.vllm_cpu, pytest.mark.slow]

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the weather in Paris?"}]


def test_a_chat_with_tools_and_logprobs_returns_consistent_tokens_usage_and_logprobs(vllm_server):
    client = make_client(f"vllm:{vllm_server}#{SERVED_NAME}", role="policy", timeout_s=60, max_retries=2)

    async def calls():
        with_tools = await client.chat(MESSAGES, tools=[WEATHER_TOOL], logprobs=True, top_logprobs=2,
                                       max_tokens=12, temperature=1.0, seed=0)
        without_tools = await client.chat(MESSAGES, max_tokens=4, temperature=0)
        return with_tools, without_tools

    result, plain = asyncio.run(calls())
    assert result.finish_reason in {"stop", "length", "tool_calls"}
    assert isinstance(result.text, str) and isinstance(result.tool_calls, list)
    assert 1 <= result.usage["completion_tokens"] <= 12
    assert len(result.logprobs) == result.usage["completion_tokens"]
    assert all(len(entry["top_logprobs"]) == 2 for entry in result.logprobs)
    assert all(value <= 0.0 for value in result.token_logprobs)
    assert result.usage["prompt_tokens"] > plain.usage["prompt_tokens"]  # the tool schema reached the prompt
    usage = client.usage()["policy"]
    assert (usage["calls"], usage["requests"], usage["failures"]) == (2, 2, 0)
    assert usage["prompt_tokens"] == result.usage["prompt_tokens"] + plain.usage["prompt_tokens"]
    assert usage["completion_tokens"] == result.usage["completion_tokens"] + plain.usage["completion_tokens"]
    assert usage["latency_s"]["max"] >= usage["latency_s"]["p50"] > 0


def test_a_history_with_tool_calls_and_tool_results_is_rendered_and_answered(vllm_server):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    history = MESSAGES + [{"role": "assistant", "content": "", "tool_calls": [call]},
                          {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21, "sky": "clear"}'}]
    client = make_client(f"vllm:{vllm_server}#{SERVED_NAME}", role="simulator", timeout_s=60, max_retries=1)

    async def calls():
        return (await client.chat(MESSAGES, tools=[WEATHER_TOOL], max_tokens=4, temperature=0),
                await client.chat(history, tools=[WEATHER_TOOL], max_tokens=4, temperature=0))

    before, after = asyncio.run(calls())
    assert after.finish_reason in {"stop", "length", "tool_calls"}
    assert after.usage["prompt_tokens"] > before.usage["prompt_tokens"] + 10  # the call and its result were rendered


def test_a_json_schema_request_is_accepted_as_structured_output(vllm_server):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    client = make_client(f"vllm:{vllm_server}#{SERVED_NAME}", role="judge", timeout_s=60, max_retries=1)
    result = asyncio.run(client.chat(MESSAGES, response_format=schema, max_tokens=8, temperature=0))
    assert result.finish_reason in {"stop", "length"}
    usage = client.usage()["judge"]
    assert usage["requests"] == 1 and "structured_output_unsupported" not in usage["retry_reasons"]


def test_a_concurrent_batch_is_answered_and_replayed_from_the_cache(vllm_server, tmp_path):
    client = make_client(f"vllm:{vllm_server}#{SERVED_NAME}", role="judge", max_concurrency=4, timeout_s=60,
                         cache=tmp_path / "cache.sqlite")
    prompts = [[{"role": "user", "content": f"Count to {n}."}] for n in range(6)]

    async def batch():
        return await asyncio.gather(*[client.chat(p, max_tokens=6, temperature=0) for p in prompts])

    first = asyncio.run(batch())
    second = asyncio.run(batch())
    assert not any(r.cached for r in first) and all(r.cached for r in second)
    assert [r.text for r in first] == [r.text for r in second]
    usage = client.usage()["judge"]
    assert (usage["calls"], usage["cache_hits"], usage["requests"]) == (12, 6, 6)


def test_an_unknown_model_name_is_a_non_retried_status_error(vllm_server):
    client = make_client(f"vllm:{vllm_server}#no-such-model", max_retries=3, timeout_s=30)
    with pytest.raises(LLMStatusError) as caught:
        asyncio.run(client.chat(MESSAGES, max_tokens=2))
    assert caught.value.status_code == 404 and caught.value.attempts == 1
    assert vllm_server in str(caught.value)
