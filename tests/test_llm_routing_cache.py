"""Routing over several endpoints and the persistent response cache (scripted servers on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import sqlite3

from cm2_env.llm import ResponseCache, make_client, request_key
from tests.support.scripted_server import Fault, ScriptedServer

USER = [{"role": "user", "content": "hello cache"}]


def spec_for(servers, model="scripted") -> str:
    return "openai:" + ",".join(s.url for s in servers) + f"#{model}"


def run_burst(client, count: int, **sampling):
    async def burst():
        return await asyncio.gather(*[client.chat([{"role": "user", "content": f"q{i}"}], **sampling)
                                      for i in range(count)])

    return asyncio.run(burst())


# ---------------------------------------------------------------- routing
def test_a_burst_is_spread_over_all_endpoints():
    with ScriptedServer(latency_s=0.02) as a, ScriptedServer(latency_s=0.02) as b, \
            ScriptedServer(latency_s=0.02) as c:
        client = make_client(spec_for([a, b, c]), max_concurrency=64)
        results = run_burst(client, 90)
        counts = [len(s.requests) for s in (a, b, c)]
    assert [r.text for r in results] == [f"q{i}" for i in range(90)]
    assert sum(counts) == 90
    assert min(counts) >= 25  # least-in-flight with rotating ties: close to 30 each
    assert {r.endpoint for r in results} == {a.url, b.url, c.url}


def test_a_slow_endpoint_receives_fewer_requests_than_a_fast_one():
    with ScriptedServer(latency_s=0.002) as fast, ScriptedServer(latency_s=0.2) as slow:
        client = make_client(spec_for([fast, slow]), max_concurrency=4)
        run_burst(client, 60)
        fast_count, slow_count = len(fast.requests), len(slow.requests)
    assert fast_count + slow_count == 60
    assert fast_count > 2 * slow_count


def test_sequential_calls_alternate_between_idle_endpoints():
    with ScriptedServer() as a, ScriptedServer() as b:
        client = make_client(spec_for([a, b]))

        async def sequential():
            return [(await client.chat(USER)).endpoint for _ in range(6)]

        endpoints = asyncio.run(sequential())
    assert endpoints == [a.url, b.url] * 3


def test_a_dead_endpoint_is_routed_around_by_retries():
    with ScriptedServer() as dead:
        pass  # started and stopped: its port now refuses connections
    with ScriptedServer() as alive:
        client = make_client("openai:" + f"{dead.url},{alive.url}#scripted", max_retries=4, backoff_base_s=0.01)
        results = run_burst(client, 20)
    assert all(r.endpoint == alive.url for r in results)
    usage = client.usage()["policy"]
    assert usage["failures"] == 0 and usage["retry_reasons"].get("connection", 0) >= 1


# ---------------------------------------------------------------- cache
def test_a_temperature_zero_call_is_replayed_from_the_cache_without_contacting_the_server(tmp_path):
    cache_path = tmp_path / "llm-cache.sqlite"
    with ScriptedServer(lambda request: "the first answer") as server:
        client = make_client(server.spec, cache=cache_path)
        first = asyncio.run(client.chat(USER, temperature=0))
        second = asyncio.run(client.chat(USER, temperature=0))
        assert len(server.requests) == 1
    assert (first.cached, second.cached) == (False, True)
    assert second.text == first.text == "the first answer"
    assert second.usage == first.usage and second.attempts == 0
    usage = client.usage()["policy"]
    assert (usage["calls"], usage["cache_hits"], usage["requests"]) == (2, 1, 1)

    # A fresh client on the same file replays with the server gone.
    replay = make_client(server.spec, cache=cache_path)
    again = asyncio.run(replay.chat(USER, temperature=0))
    assert again.cached and again.text == "the first answer"


def test_sampled_calls_are_not_cached_unless_asked(tmp_path):
    with ScriptedServer() as server:
        default = make_client(server.spec, cache=tmp_path / "a.sqlite")
        asyncio.run(default.chat(USER, temperature=0.8))
        asyncio.run(default.chat(USER, temperature=0.8))
        asyncio.run(default.chat(USER))  # no temperature: the server's default, which samples
        assert len(server.requests) == 3
        always = make_client(server.spec, cache=tmp_path / "b.sqlite", cache_any_temperature=True)
        asyncio.run(always.chat(USER, temperature=0.8))
        asyncio.run(always.chat(USER, temperature=0.8))
        assert len(server.requests) == 4


def test_the_cache_key_covers_every_sampling_parameter_and_tools(tmp_path):
    with ScriptedServer() as server:
        client = make_client(server.spec, cache=tmp_path / "c.sqlite")
        variants = [{}, {"max_tokens": 5}, {"seed": 1}, {"tools": [{"type": "function", "function": {"name": "f"}}]}]

        async def calls():
            for variant in variants * 2:
                await client.chat(USER, temperature=0, **variant)

        asyncio.run(calls())
        assert len(server.requests) == len(variants)


def test_request_keys_ignore_dict_order_but_not_values():
    one = {"model": "m", "messages": USER, "temperature": 0, "max_tokens": 8}
    same = {"max_tokens": 8, "temperature": 0, "messages": USER, "model": "m"}
    assert request_key(one) == request_key(same)
    assert request_key(one) != request_key({**one, "max_tokens": 9})
    assert request_key(one) != request_key({**one, "model": "other"})


def test_failed_answers_are_not_cached(tmp_path):
    replies = iter([Fault.garbage(), "good"])
    with ScriptedServer(lambda request: next(replies, "later")) as server:
        client = make_client(server.spec, cache=tmp_path / "d.sqlite", backoff_base_s=0.01)
        first = asyncio.run(client.chat(USER, temperature=0))
        second = asyncio.run(client.chat(USER, temperature=0))
    assert first.text == second.text == "good" and second.cached
    assert len(server.requests) == 2


def test_a_concurrent_burst_of_identical_and_distinct_requests_shares_one_cache_file(tmp_path):
    cache_path = tmp_path / "e.sqlite"
    with ScriptedServer() as server:
        writer_a = make_client(server.spec, cache=cache_path, max_concurrency=32)
        writer_b = make_client(server.spec, cache=cache_path, max_concurrency=32)

        async def burst():
            calls = [client.chat([{"role": "user", "content": f"q{i % 25}"}], temperature=0)
                     for i in range(100) for client in (writer_a, writer_b)]
            return await asyncio.gather(*calls)

        results = asyncio.run(burst())
        assert all(r.text == f"q{(i // 2) % 25}" for i, r in enumerate(results))
        sent = len(server.requests)
        replay = asyncio.run(writer_a.chat([{"role": "user", "content": "q7"}], temperature=0))
        assert len(server.requests) == sent and replay.cached
    assert len(ResponseCache(cache_path)) == 25
    with sqlite3.connect(cache_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_corrupt_cache_row_is_treated_as_a_miss(tmp_path):
    cache = ResponseCache(tmp_path / "f.sqlite")
    cache.put("k", {"x": 1})
    with sqlite3.connect(tmp_path / "f.sqlite") as conn:
        conn.execute("UPDATE responses SET body = 'not json' WHERE key = 'k'")
    assert cache.get("k") is None
    assert cache.get("missing") is None
