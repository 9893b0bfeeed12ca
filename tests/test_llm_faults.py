"""Acceptance: the client answers every request of a burst against a server that fails 20% of its requests."""

from __future__ import annotations

import asyncio

import pytest

from cm2_env.llm import LLMInvalidResponseError, LLMTimeoutError, make_client
from tests.support.scripted_server import Fault, ScriptedServer


def prompt(index: int) -> list[dict]:
    return [{"role": "user", "content": f"request number {index}"}]


def test_a_burst_of_200_chats_against_a_server_failing_20_percent_is_answered_in_full():
    # A stall outlasts the client's timeout by far, and the timeout is long enough that an answer delayed by a
    # busy machine is not taken for a stall; the circuit breaker (tested on its own) is kept out of the way, so
    # that how loaded the machine is cannot decide the outcome.
    faults = [Fault.http(500), Fault.http(429, retry_after=0.05), Fault.stall(30.0), Fault.garbage()]
    with ScriptedServer() as server:
        server.fault_rate = (0.2, faults)
        client = make_client(server.spec, role="policy", max_concurrency=256, timeout_s=8.0, max_retries=10,
                             backoff_base_s=0.05, backoff_max_s=0.5, breaker_failures=1_000_000)

        async def burst():
            return await asyncio.gather(*[client.chat(prompt(i)) for i in range(200)])

        results = asyncio.run(burst())
        injected = sum(server.faults_injected.values())
        received = len(server.requests)
    assert [r.text for r in results] == [f"request number {i}" for i in range(200)]  # each got its own answer
    usage = client.usage()["policy"]
    assert usage["calls"] == 200 and usage["failures"] == 0
    assert injected > 0
    assert usage["retries"] == received - 200  # every extra request the server saw is a counted retry
    assert usage["retries"] >= injected  # each injected fault cost a retry (a slow machine may add timeouts)
    assert usage["requests"] == received
    assert sum(usage["retry_reasons"].values()) == usage["retries"]
    assert set(usage["retry_reasons"]) <= {"http_500", "http_429", "timeout", "invalid_response"}
    assert sum(r.attempts for r in results) == received
    assert usage["completion_tokens"] == 3 * 200


@pytest.mark.parametrize("fault, reason", [
    (Fault.http(500), "http_500"),
    (Fault.http(502), "http_502"),
    (Fault.http(429, retry_after=0), "http_429"),
    (Fault.garbage(), "invalid_response"),
    (Fault.garbage('{"not": "a completion"}'), "invalid_response"),
    (Fault.empty(), "invalid_response"),
    (Fault.stall(1.0), "timeout"),
])
def test_each_fault_kind_is_retried_once_then_answered(fault, reason):
    replies = iter([fault])
    with ScriptedServer(lambda request: next(replies, "recovered")) as server:
        client = make_client(server.spec, timeout_s=0.3, max_retries=2, backoff_base_s=0.01)
        result = asyncio.run(client.chat(prompt(0)))
    assert result.text == "recovered" and result.attempts == 2
    assert client.usage()["policy"]["retry_reasons"] == {reason: 1}


def test_a_server_that_keeps_stalling_raises_a_timeout_error_naming_the_endpoint():
    with ScriptedServer(lambda request: Fault.stall(1.0)) as server:
        client = make_client(server.spec, timeout_s=0.2, max_retries=1, backoff_base_s=0.01)
        with pytest.raises(LLMTimeoutError) as caught:
            asyncio.run(client.chat(prompt(0)))
    assert caught.value.endpoint == server.url and caught.value.attempts == 2
    assert "no answer within 0.2 s" in str(caught.value)


def test_a_server_that_keeps_sending_garbage_raises_an_invalid_response_error():
    with ScriptedServer(lambda request: Fault.garbage("<html>502 Bad Gateway</html>")) as server:
        client = make_client(server.spec, max_retries=2, backoff_base_s=0.01)
        with pytest.raises(LLMInvalidResponseError, match="not JSON"):
            asyncio.run(client.chat(prompt(0)))
    assert len(server.requests) == 3
