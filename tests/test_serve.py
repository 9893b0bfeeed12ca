"""`cm2 serve`: a cm2 policy behind an OpenAI-compatible endpoint, talked to with the `openai` SDK."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading

import pytest
from openai import BadRequestError, NotFoundError, OpenAI, AuthenticationError

from agents import ReplayAgent
from agents.rollout import run_rollouts
from agents.serve import ChatServer, serve_in_thread
from cm2_env.data import load_dialogues
from cm2_env.env import CM2ToolUseEnv

DIALOGUE = "tooltalk/Calendar-Reminder-Weather-ModifyEvent-1"


@pytest.fixture(scope="module")
def dialogues():
    return load_dialogues("tooltalk")


def _first_observation(dialogue_id=DIALOGUE):
    env = CM2ToolUseEnv("tooltalk")
    _, info = env.reset(options={"dialogue_id": dialogue_id})
    env.close()
    return info


def test_replay_served_over_http_plays_whole_episodes_exactly_as_in_process(dialogues):
    """Tool calls round-trip: the endpoint agent sends the history (its calls and the tool results) back each
    step, the server finds the dialogue by its first user message and answers with native tool_calls."""
    chosen = dialogues[:6]
    direct = run_rollouts(chosen, ReplayAgent(chosen), progress=False)
    with serve_in_thread(ChatServer(ReplayAgent(dialogues), dialogues=dialogues)) as url:
        from agents import make_agent

        served = run_rollouts(chosen, make_agent(f"openai:{url}#cm2-policy"), progress=False)
    assert [r.R for r in served] == [r.R for r in direct] and sum(r.R for r in direct) > 3
    assert [r.messages for r in served] == [r.messages for r in direct]
    assert sum(r.usage["tool_calls"] for r in served) > 0


def test_the_openai_sdk_gets_native_tool_calls_with_tools_and_text_without(dialogues):
    info = _first_observation()
    with serve_in_thread(ChatServer(ReplayAgent(dialogues), dialogues=dialogues)) as url:
        client = OpenAI(base_url=url, api_key="unused")
        assert [m.id for m in client.models.list().data] == ["cm2-policy"]
        native = client.chat.completions.create(model="cm2-policy", messages=info["messages"], tools=info["tools"])
        text = client.chat.completions.create(model="cm2-policy", messages=info["messages"])
        pinned = client.chat.completions.create(model="cm2-policy", messages=info["messages"], tools=info["tools"],
                                                metadata={"dialogue_id": DIALOGUE})
    choice = native.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "QueryCalendar" and call.id.startswith("call_")
    assert '"start_time"' in call.function.arguments
    assert text.choices[0].message.tool_calls is None and "<tool_call>" in text.choices[0].message.content
    assert pinned.choices[0].message.tool_calls[0].function.arguments == call.function.arguments


def test_a_local_model_answers_as_it_does_in_process_for_the_same_seed(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agents.transformers_agent import TransformersAgent
    from tests.support.tiny_models import micro_model_dir

    path = micro_model_dir(tmp_path / "micro", seed=3)
    agent = TransformersAgent(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                              max_new_tokens=24, temperature=1.0)
    info = _first_observation()
    direct = asyncio.run(agent.act(info["messages"], [], {"sampling_seed": 11}))
    with serve_in_thread(ChatServer(agent, model_name="micro")) as url:
        answer = OpenAI(base_url=url, api_key="x").chat.completions.create(
            model="micro", messages=info["messages"], seed=11)
    assert answer.choices[0].message.content == direct.text
    assert answer.usage.completion_tokens == len(direct.completion_ids)
    assert answer.usage.prompt_tokens == len(direct.prompt_ids)
    eos_at_end = direct.completion_ids[-1] == agent.eos_id
    assert answer.choices[0].finish_reason == ("stop" if eos_at_end else "length")


def test_concurrent_requests_are_batched_by_the_agent(tmp_path):
    """Eight requests at once: the first generation is held until the other seven are queued behind it, so they
    must form one batch -- which happens only if the server handles requests concurrently."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agents.transformers_agent import TransformersAgent
    from tests.support.tiny_models import micro_model_dir

    class HeldAgent(TransformersAgent):
        def _run_generate(self, prompts, seeds):
            if not self.batches:  # the first batch waits (at most 120 s) until the rest are queued
                for _ in range(12000):
                    if len(self._queue) >= 8 - len(prompts):
                        break
                    threading.Event().wait(0.01)
            return super()._run_generate(prompts, seeds)

    path = micro_model_dir(tmp_path / "micro", seed=3)
    agent = HeldAgent(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                      max_new_tokens=8)
    info = _first_observation()

    async def many(url):
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=url, api_key="x")
        answers = await asyncio.gather(*(client.chat.completions.create(
            model="micro", messages=info["messages"], seed=i) for i in range(8)))
        await client.close()
        return answers

    with serve_in_thread(ChatServer(agent, model_name="micro")) as url:
        answers = asyncio.run(many(url))
    assert len(answers) == 8 and sum(agent.batches) == 8
    assert len(agent.batches) <= 2, agent.batches


def test_bad_requests_get_openai_errors_and_a_too_long_prompt_reads_as_a_context_overflow(tmp_path, dialogues):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agents.base import ContextLimitExceeded
    from agents.endpoint import EndpointAgent
    from agents.transformers_agent import TransformersAgent
    from tests.support.tiny_models import micro_model_dir

    path = micro_model_dir(tmp_path / "micro", seed=3)
    agent = TransformersAgent(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                              max_new_tokens=4, max_prompt_tokens=10)
    info = _first_observation()
    with serve_in_thread(ChatServer(agent, model_name="micro", api_key="s3cret")) as url:
        client = OpenAI(base_url=url, api_key="s3cret", max_retries=0)
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        with pytest.raises(NotFoundError, match="serves 'micro'"):
            client.chat.completions.create(model="gpt-4o", messages=info["messages"])
        for extra, match in (({"stream": True}, "stream"), ({"n": 2}, "n=1"),
                             ({"tools": [{"type": "function"}]}, "tools must be")):
            with pytest.raises(BadRequestError, match=match):
                client.chat.completions.create(model="micro", messages=info["messages"], **extra)
        with pytest.raises(BadRequestError, match="role"):
            client.chat.completions.create(model="micro", messages=[{"role": "robot", "content": "x"}])
        with pytest.raises(BadRequestError, match="maximum context length"):
            client.chat.completions.create(model="micro", messages=info["messages"])
        endpoint = EndpointAgent(f"openai:{url}#micro", client_options={"api_key": "s3cret", "max_retries": 0})
        with pytest.raises(ContextLimitExceeded):
            asyncio.run(endpoint.act(info["messages"], []))


class RaisingAgent:
    """A policy with a bug whose message quotes the request (as real exceptions do)."""

    async def act(self, messages, tools, context=None):
        raise ValueError(f"cannot handle {messages[-1]['content']!r}")


def test_a_policy_that_raises_gets_a_500_policy_error_that_quotes_nothing(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="cm2.serve")
    with serve_in_thread(ChatServer(RaisingAgent(), model_name="buggy")) as url:
        client = OpenAI(base_url=url, api_key="x", max_retries=0)
        with pytest.raises(Exception) as raised:
            client.chat.completions.create(model="buggy", messages=[{"role": "user", "content": "key sk-SECRET-1"}])
    assert raised.value.status_code == 500 and raised.value.body["code"] == "policy_error"
    assert "ValueError" in str(raised.value) and "sk-SECRET-1" not in str(raised.value)
    assert "POST /v1/chat/completions 500" in caplog.text and "sk-SECRET-1" not in caplog.text


def test_tool_choice_none_hides_the_tools_and_a_forced_call_or_a_malformed_body_is_a_400(dialogues, monkeypatch):
    import httpx

    import agents.serve

    info = _first_observation()
    with serve_in_thread(ChatServer(ReplayAgent(dialogues), dialogues=dialogues)) as url:
        client = OpenAI(base_url=url, api_key="x", max_retries=0)
        hidden = client.chat.completions.create(model="cm2-policy", messages=info["messages"], tools=info["tools"],
                                                tool_choice="none")
        assert hidden.choices[0].message.tool_calls is None
        with pytest.raises(BadRequestError, match="tool_choice"):
            client.chat.completions.create(model="cm2-policy", messages=info["messages"], tools=info["tools"],
                                           tool_choice="required")
        bad_bodies = [{"model": "cm2-policy", "messages": 5}, {"messages": info["messages"]},
                      {"model": "cm2-policy", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}]
        for body in bad_bodies:
            assert httpx.post(f"{url}/chat/completions", json=body).status_code == 400, body
        deep = "[" * 100_000 + "]" * 100_000
        assert httpx.post(f"{url}/chat/completions", content=deep).status_code == 400
        monkeypatch.setattr(agents.serve, "MAX_BODY_BYTES", 1000)
        answer = httpx.post(f"{url}/chat/completions", json={"model": "cm2-policy", "messages": [
            {"role": "user", "content": "x" * 2000}]})
        assert answer.status_code == 413


@pytest.mark.timeout(300)
def test_cm2_serve_prints_its_url_logs_without_secrets_and_stops_cleanly_on_sigterm():
    env = {**os.environ, "SERVE_KEY": "k-9f8e7d", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "cm2_env.cli", "serve", "--agent", "replay", "--port", "0",
                                "--api-key-env", "SERVE_KEY", "--served-model-name", "ref"],
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if " at http://" in line:
                break
        assert lines and " at http://" in lines[-1], "".join(lines)
        url = lines[-1].split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        info = _first_observation()
        answer = OpenAI(base_url=url, api_key="k-9f8e7d").chat.completions.create(
            model="ref", messages=info["messages"], tools=info["tools"])
        assert answer.choices[0].message.tool_calls[0].function.name == "QueryCalendar"
        process.send_signal(signal.SIGTERM)
        rest = process.stderr.read()
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    log = "".join(lines) + rest
    assert "POST /v1/chat/completions 200" in log and "cm2 serve: stopped" in log
    assert "k-9f8e7d" not in log and "Calendar" not in log  # no key, no message text


def test_a_replay_request_for_a_dialogue_the_server_was_not_given_is_a_400_that_says_how_to_name_one(dialogues):
    import httpx

    info = _first_observation()
    with serve_in_thread(ChatServer(ReplayAgent(dialogues), dialogues=dialogues)) as url:
        for unknown in ({"model": "cm2-policy", "messages": [{"role": "user", "content": "a dialogue nobody wrote"}]},
                        {"model": "cm2-policy", "messages": info["messages"], "metadata": {"dialogue_id": "nope"}},
                        {"model": "cm2-policy", "messages": info["messages"], "metadata": {"dialogue_id": 5}}):
            refused = httpx.post(f"{url}/chat/completions", json=unknown)
            assert (refused.status_code, refused.json()["error"]["code"]) == (400, "unknown_dialogue"), unknown
            assert "metadata.dialogue_id" in refused.json()["error"]["message"]
        known = httpx.post(f"{url}/chat/completions", json={"model": "cm2-policy", "messages": info["messages"]})
        assert known.status_code == 200
    twins = [dialogues[0], dialogues[0].model_copy(update={"id": "twin"})]
    with serve_in_thread(ChatServer(ReplayAgent(twins), dialogues=twins)) as url:
        first_user = next(m.text for m in twins[0].messages if m.role == "user")
        refused = httpx.post(f"{url}/chat/completions", json={"model": "cm2-policy", "messages": [
            {"role": "user", "content": first_user}]})
        assert refused.status_code == 400 and "several bundled dialogues" in refused.json()["error"]["message"]
