"""The LLM client's contract: spec strings, results, structured output, errors, keys, limits (scripted server)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from pydantic import BaseModel

from cm2_env.llm import (LLMConfigError, LLMConnectionError, LLMServerError, LLMStatusError, UsageTracker,
                         extract_json, make_client, parse_spec)
from cm2_env.llm.client import parse_retry_after
from cm2_env.llm.limits import TokenBucket
from tests.support.scripted_server import Fault, ScriptedServer

USER = [{"role": "user", "content": "what is the weather in Paris"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def fast_client(spec: str, **options):
    """A client with test-sized timeouts and backoff."""
    defaults = {"timeout_s": 5.0, "max_retries": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05}
    return make_client(spec, **{**defaults, **options})


# ---------------------------------------------------------------- spec strings
def test_spec_with_several_urls_keeps_them_in_order_and_strips_trailing_slashes():
    spec = parse_spec("vllm:http://a:8000/v1/,http://b:8000/v1#Qwen/Qwen3-8B?max_concurrency=8&timeout_s=30")
    assert spec.provider == "vllm"
    assert spec.urls == ("http://a:8000/v1", "http://b:8000/v1")
    assert spec.model == "Qwen/Qwen3-8B"
    assert spec.options == {"max_concurrency": 8, "timeout_s": 30.0}
    assert str(spec) == "vllm:http://a:8000/v1,http://b:8000/v1#Qwen/Qwen3-8B?max_concurrency=8&timeout_s=30.0"


def test_spec_without_provider_prefix_defaults_to_openai():
    spec = parse_spec("http://127.0.0.1:8000/v1#tiny:latest")
    assert (spec.provider, spec.urls, spec.model) == ("openai", ("http://127.0.0.1:8000/v1",), "tiny:latest")


@pytest.mark.parametrize("bad, words", [
    ("openai:http://127.0.0.1:8000/v1", "no model name"),
    ("openai:http://127.0.0.1:8000/v1#", "model name"),
    ("openai:ftp://host/v1#m", "not an http(s) URL"),
    ("openai:http://user:sk-secret@host/v1#m", "credentials"),
    ("openai:http://host/v1#m?api_key=sk-secret", "secret"),
    ("openai:http://host/v1#m?colour=blue", "unknown option"),
    ("openai:http://host/v1#m?max_retries=lots", "not a int"),
    ("", "empty"),
])
def test_bad_spec_strings_are_rejected_with_a_fix(bad, words):
    with pytest.raises(LLMConfigError) as caught:
        parse_spec(bad)
    assert words in str(caught.value)
    assert "Fix:" in str(caught.value)


def test_unknown_make_client_option_is_rejected():
    with pytest.raises(LLMConfigError, match="unknown make_client option"):
        make_client("openai:http://127.0.0.1:1/v1#m", max_concurency=3)


# ---------------------------------------------------------------- results
def test_chat_returns_text_usage_latency_and_the_request_carries_sampling_fields():
    with ScriptedServer(lambda request: "it is sunny today") as server:
        client = fast_client(server.spec, role="policy")
        result = asyncio.run(client.chat(USER, temperature=0.7, max_tokens=32, top_k=5, seed=3))
    assert result.text == "it is sunny today"
    assert result.finish_reason == "stop"
    assert result.tool_calls == []
    assert result.usage["prompt_tokens"] == 6 and result.usage["completion_tokens"] == 4
    assert result.latency_s > 0 and result.attempts == 1 and not result.cached
    assert result.logprobs is None
    sent = server.requests[0]
    assert sent["model"] == "scripted" and sent["messages"] == USER
    assert (sent["temperature"], sent["max_tokens"], sent["top_k"], sent["seed"]) == (0.7, 32, 5, 3)
    usage = client.usage()["policy"]
    assert (usage["calls"], usage["requests"], usage["retries"], usage["failures"]) == (1, 1, 0, 0)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (6, 4)


def test_tool_calls_come_back_as_openai_dicts_and_tools_are_sent():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    with ScriptedServer(lambda request: {"content": None, "tool_calls": [call]}) as server:
        result = asyncio.run(fast_client(server.spec).chat(USER, tools=[WEATHER_TOOL], tool_choice="auto"))
    assert server.requests[0]["tools"] == [WEATHER_TOOL]
    assert server.requests[0]["tool_choice"] == "auto"
    assert result.tool_calls == [call]
    assert result.text == ""
    assert result.finish_reason == "tool_calls"
    assert result.message == {"role": "assistant", "content": "", "tool_calls": [call]}


def test_logprobs_are_returned_when_asked():
    with ScriptedServer(lambda request: "one two three") as server:
        result = asyncio.run(fast_client(server.spec).chat(USER, logprobs=True, top_logprobs=2))
    assert [entry["token"] for entry in result.logprobs] == ["one", "two", "three"]
    assert result.token_logprobs == pytest.approx([-0.1, -0.2, -0.3])
    assert len(result.logprobs[0]["top_logprobs"]) == 2


def test_client_defaults_are_merged_under_per_call_sampling():
    with ScriptedServer() as server:
        client = fast_client(server.spec, sampling={"temperature": 0.0, "max_tokens": 16})
        asyncio.run(client.chat(USER, max_tokens=64))
    assert server.requests[0]["temperature"] == 0.0 and server.requests[0]["max_tokens"] == 64


def test_one_client_works_across_successive_event_loops():
    with ScriptedServer() as server:
        client = fast_client(server.spec)
        first = asyncio.run(client.chat(USER))
        second = asyncio.run(client.chat(USER))
    assert first.text == second.text == USER[0]["content"]
    assert client.usage()["policy"]["calls"] == 2


# ---------------------------------------------------------------- structured output
class Verdict(BaseModel):
    satisfied: bool
    reason: str


def test_json_schema_is_requested_and_the_answer_parsed():
    with ScriptedServer(lambda request: '{"satisfied": true, "reason": "ok"}') as server:
        result = asyncio.run(fast_client(server.spec, role="judge").chat(USER, response_format=Verdict))
    sent = server.requests[0]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Verdict"
    assert sent["json_schema"]["schema"]["required"] == ["satisfied", "reason"]
    assert result.parsed == {"satisfied": True, "reason": "ok"}


def test_a_bare_schema_is_wrapped_and_prose_around_the_json_is_tolerated():
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}}
    with ScriptedServer(lambda request: 'Sure! Here it is:\n```json\n{"score": 3}\n```\nHope it helps.') as server:
        result = asyncio.run(fast_client(server.spec).chat(USER, response_format=schema))
    assert server.requests[0]["response_format"] == {"type": "json_schema",
                                                     "json_schema": {"name": "output", "schema": schema}}
    assert result.parsed == {"score": 3}


def test_a_server_rejecting_response_format_gets_the_request_without_it_from_then_on():
    rejection = Fault.http(400, message="response_format of type json_schema is not supported by this model")

    def no_structured_output(request):
        if "response_format" in request:
            return rejection
        return 'The verdict: {"satisfied": false, "reason": "missing"}'

    with ScriptedServer(no_structured_output) as server:
        client = fast_client(server.spec, role="judge")
        first = asyncio.run(client.chat(USER, response_format=Verdict))
        second = asyncio.run(client.chat(USER, response_format=Verdict))
    assert first.parsed == second.parsed == {"satisfied": False, "reason": "missing"}
    assert ["response_format" in r for r in server.requests] == [True, False, False]
    assert client.usage()["judge"]["retry_reasons"] == {"structured_output_unsupported": 1}


def test_a_400_about_something_else_does_not_turn_structured_output_off():
    with ScriptedServer(lambda request: Fault.http(400, message="maximum context length exceeded")) as server:
        client = fast_client(server.spec)
        for _ in range(2):
            with pytest.raises(LLMStatusError, match="context length"):
                asyncio.run(client.chat(USER, response_format=Verdict))
    assert ["response_format" in r for r in server.requests] == [True, True]


# ---------------------------------------------------------------- errors
def test_a_plain_4xx_is_not_retried_and_the_error_names_endpoint_and_status():
    with ScriptedServer(lambda request: Fault.http(404)) as server:
        client = fast_client(server.spec, role="simulator", max_retries=5)
        with pytest.raises(LLMStatusError) as caught:
            asyncio.run(client.chat(USER))
    error = caught.value
    assert error.status_code == 404 and error.attempts == 1 and error.endpoint == server.url
    assert server.url in str(error) and "simulator" in str(error) and "http_404" in str(error)
    assert len(server.requests) == 1
    assert client.usage()["simulator"]["failures"] == 1


def test_persistent_5xx_raises_a_server_error_after_the_last_retry():
    with ScriptedServer(lambda request: Fault.http(503)) as server:
        client = fast_client(server.spec, max_retries=2)
        with pytest.raises(LLMServerError) as caught:
            asyncio.run(client.chat(USER))
    assert caught.value.attempts == 3 and len(server.requests) == 3
    assert "failed after 3 attempt(s)" in str(caught.value)
    usage = client.usage()["policy"]
    assert (usage["retries"], usage["failures"], usage["retry_reasons"]) == (2, 1, {"http_503": 2})


def test_an_unreachable_endpoint_raises_a_connection_error():
    with ScriptedServer() as server:
        url = server.url
    client = fast_client(f"openai:{url}#m", max_retries=1)
    with pytest.raises(LLMConnectionError, match="connection"):
        asyncio.run(client.chat(USER))


def test_retry_after_is_honoured():
    replies = iter([Fault.http(429, retry_after=0.4), "ok"])
    with ScriptedServer(lambda request: next(replies)) as server:
        client = fast_client(server.spec)
        started = time.perf_counter()
        result = asyncio.run(client.chat(USER))
        elapsed = time.perf_counter() - started
    assert result.text == "ok" and result.attempts == 2
    assert elapsed >= 0.4  # the backoff alone would be ~0.01 s


def test_retry_after_headers_in_seconds_milliseconds_and_dates_are_understood():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


# ---------------------------------------------------------------- API keys
SECRET = "sk-test-0123456789abcdef"


def test_the_api_key_option_is_sent_but_never_shown(caplog):
    with ScriptedServer(lambda request: Fault.http(500, retry_after=0)) as server:
        client = fast_client(server.spec, api_key=SECRET, max_retries=1)
        with caplog.at_level(logging.DEBUG), pytest.raises(LLMServerError) as caught:
            asyncio.run(client.chat(USER))
    assert server.headers[0]["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in repr(client) and SECRET not in str(client.usage()) and SECRET not in str(caught.value)
    assert SECRET not in caplog.text


def test_the_api_key_comes_from_the_variable_a_spec_names(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", SECRET)
    monkeypatch.setenv("CM2_API_KEY", "sk-other")
    with ScriptedServer() as server:
        asyncio.run(fast_client(server.spec + "?key_env=JUDGE_KEY_FOR_TEST").chat(USER))
        asyncio.run(fast_client(server.spec).chat(USER))
    assert [h["authorization"] for h in server.headers] == [f"Bearer {SECRET}", "Bearer sk-other"]


def test_a_named_but_unset_key_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(LLMConfigError, match="NO_SUCH_KEY_VAR"):
        make_client("openai:http://127.0.0.1:1/v1#m?key_env=NO_SUCH_KEY_VAR")


# ---------------------------------------------------------------- limits and accounting
def test_a_token_bucket_allows_one_minute_of_burst_then_the_steady_rate():
    async def scenario():
        bucket = TokenBucket(per_minute=600)  # 10 per second
        started = time.perf_counter()
        for _ in range(600):
            await bucket.acquire(1)
        burst = time.perf_counter() - started
        await bucket.acquire(3)
        return burst, time.perf_counter() - started - burst

    burst_s, wait_s = asyncio.run(scenario())
    assert burst_s < 0.25
    assert wait_s >= 0.25  # 3 units at 10/s, minus what refilled during the burst


def test_concurrency_per_endpoint_is_capped():
    lock = threading.Lock()
    active, peak = 0, 0

    def slow_echo(request):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.03)
        with lock:
            active -= 1
        return "done"

    with ScriptedServer(slow_echo) as server:
        client = fast_client(server.spec, max_concurrency=4)

        async def burst():
            return await asyncio.gather(*[client.chat(USER) for _ in range(24)])

        results = asyncio.run(burst())
    assert [r.text for r in results] == ["done"] * 24
    assert peak == 4


def test_clients_sharing_a_tracker_report_each_role():
    tracker = UsageTracker()
    with ScriptedServer() as server:
        judge = fast_client(server.spec, role="judge", usage=tracker)
        simulator = fast_client(server.spec, role="simulator", usage=tracker)

        async def both():
            await judge.chat(USER)
            await simulator.chat(USER)
            await simulator.chat(USER)

        asyncio.run(both())
    usage = judge.usage()
    assert usage == simulator.usage()
    assert (usage["judge"]["calls"], usage["simulator"]["calls"]) == (1, 2)
    assert set(usage["judge"]["latency_s"]) == {"mean", "p50", "p90", "p99", "max"}


def test_extract_json_is_exported_from_the_package():
    assert extract_json('verdict: {"ok": true}') == {"ok": True}
