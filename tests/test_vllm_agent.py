"""The vLLM rollout engine's parts that need no vLLM: text completions in the LLM client, the remote agent's token
bookkeeping, the weight push to servers, the config knobs and the logprob-mismatch metric. A scripted
OpenAI-compatible server and a scripted vLLM admin server stand in for vLLM (external services); the real thing
is exercised by tests/test_vllm_engine.py."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents.token_path import prompt_ids
from agents.vllm_agent import RemoteVLLMAgent, push_weights_to_servers, server_root
from cm2_env.llm import LLMInvalidResponseError, make_client
from cm2_env.llm.completion import InvalidCompletion, parse_text_completion
from tests.support.scripted_server import ScriptedServer
from tests.support.tiny_models import micro_model_dir
from train.config import ConfigError, GRPOConfig
from train.update import logprob_gap
from train.policy import load_tokenizer
from train.sequences import TokenSequence


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(str(micro_model_dir(tmp_path_factory.mktemp("micro"))))


def _completion_body(token_ids, logprobs, text="ok"):
    return {"id": "c", "object": "text_completion", "model": "scripted",
            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "token_ids": token_ids,
                         "logprobs": {"tokens": [f"t{t}" for t in token_ids], "token_logprobs": logprobs}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": len(token_ids)}}


# -- the text-completion parser: model output is hostile input ------------------------------------------------


def test_a_text_completion_body_becomes_text_usage_and_per_token_logprobs():
    result = parse_text_completion(_completion_body([5, 6, 2], [-0.5, -1.0, -0.25], text="hi"))
    assert (result.text, result.tool_calls, result.finish_reason) == ("hi", [], "stop")
    assert result.token_logprobs == [-0.5, -1.0, -0.25]
    assert result.usage == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert result.raw["choices"][0]["token_ids"] == [5, 6, 2]


@pytest.mark.parametrize("body", [None, [], "text", {"choices": []}, {"error": {"message": "boom"}},
                                  {"choices": [None]}, {"choices": [{"text": 5}]},
                                  {"choices": [{"text": "", "logprobs": {"token_logprobs": ["x"]}}]},
                                  {"choices": [{"text": "", "logprobs": {"token_logprobs": [10 ** 400]}}]},
                                  {"choices": [{"text": "", "logprobs": {"token_logprobs": [float("nan")]}}]},
                                  {"choices": [{"text": "", "logprobs": {"token_logprobs": [-float("inf")]}}]},
                                  {"choices": [{"text": "", "logprobs": {"token_logprobs": [0.5]}}]},
                                  {"choices": [{"text": "", "logprobs": {"token_logprobs": [None]}}]},
                                  {"choices": [{"text": "", "logprobs": {"token_logprobs": [True]}}]}])
def test_a_garbage_text_completion_raises_only_invalid_completion(body):
    with pytest.raises(InvalidCompletion):
        parse_text_completion(body)


@pytest.mark.parametrize("usage", [{"prompt_tokens": "abc"}, {"prompt_tokens": [1]}, {"prompt_tokens": 1e999},
                                   {"prompt_tokens": -5}, {"completion_tokens": 10 ** 400}, "garbage"])
def test_garbage_usage_counts_read_as_zero_instead_of_raising(usage):
    result = parse_text_completion({"choices": [{"text": "ok"}], "usage": usage})
    assert result.text == "ok" and all(type(v) is int and v >= 0 for v in result.usage.values())


# -- the remote agent: exact ids from the server, the action's seed, our own prompt ids ----------------------


def test_the_remote_agent_sends_our_prompt_ids_and_seed_and_records_the_servers_ids_and_logprobs(tokenizer):
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    reply = tokenizer.encode("Done.", add_special_tokens=False) + [eos]

    def respond(request):
        return _completion_body(reply, [-0.1 * (i + 1) for i in range(len(reply))])

    messages = [{"role": "user", "content": "Register me, please."}]
    with ScriptedServer(respond) as server:
        agent = RemoteVLLMAgent(server.spec, tokenizer, max_new_tokens=9, temperature=0.7, top_p=0.9)
        step = asyncio.run(agent.act(messages, [], {"sampling_seed": 12345}))
        request = server.requests[0]
    assert request["prompt"] == prompt_ids(tokenizer, messages, [])
    assert (request["seed"], request["max_tokens"], request["temperature"], request["top_p"]) == (12345, 9, 0.7, 0.9)
    assert request["return_token_ids"] is True and request["logprobs"] == 0
    assert request["stop_token_ids"] == [eos] and request["ignore_eos"] is True
    assert step.prompt_ids == request["prompt"] and step.completion_ids == reply
    assert step.logprobs == pytest.approx([-0.1 * (i + 1) for i in range(len(reply))])
    assert step.text == "Done." and step.message["content"] == "Done."


def test_a_server_without_token_ids_is_an_error_not_a_guess(tokenizer):
    def respond(request):
        body = _completion_body([5, 6], [-1.0, -1.0])
        del body["choices"][0]["token_ids"]
        return body

    with ScriptedServer(respond) as server:
        agent = RemoteVLLMAgent(server.spec, tokenizer, max_retries=0)
        with pytest.raises(LLMInvalidResponseError, match="token ids"):
            asyncio.run(agent.act([{"role": "user", "content": "hi"}], []))


@pytest.mark.parametrize("ids", [[10 ** 6], [-1], [True], [1.0], [2 ** 70], "12"])
def test_token_ids_the_tokenizer_cannot_hold_are_refused_before_they_reach_the_trainer(tokenizer, ids):
    def respond(request):
        body = _completion_body([5], [-1.0])
        body["choices"][0]["token_ids"] = ids
        body["choices"][0]["logprobs"]["token_logprobs"] = [-1.0] * (len(ids) if isinstance(ids, list) else 1)
        return body

    with ScriptedServer(respond) as server:
        agent = RemoteVLLMAgent(server.spec, tokenizer, max_retries=0)
        with pytest.raises(LLMInvalidResponseError, match="valid token ids"):
            asyncio.run(agent.act([{"role": "user", "content": "hi"}], []))


def test_completions_share_the_clients_retries_and_usage():
    calls = []

    def respond(request):
        calls.append(request)
        if len(calls) == 1:
            from tests.support.scripted_server import Fault

            return Fault.http(503)
        return _completion_body([3], [-0.5])

    with ScriptedServer(respond) as server:
        client = make_client(server.spec, role="policy", max_retries=2, backoff_base_s=0.01)
        result = asyncio.run(client.complete([1, 2, 3], max_tokens=1))
        usage = client.usage()["policy"]
    assert result.token_logprobs == [-0.5] and len(calls) == 2
    assert (usage["calls"], usage["requests"], usage["retries"]) == (1, 2, 1)


# -- pushing weights to servers -------------------------------------------------------------------------------


class FakeVLLMAdmin:
    """vLLM's weight-update endpoints (a test double of an external server): records the calls; ``stale`` keeps
    the old version; ``dev_mode=False`` answers 404 as a server started without VLLM_SERVER_DEV_MODE does."""

    def __init__(self, *, stale: bool = False, dev_mode: bool = True, failing: str = ""):
        self.calls: list[tuple[str, object]] = []
        self.version = "initial"
        self.stale, self.dev_mode, self.failing = stale, dev_mode, failing
        admin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # noqa: D102
                pass

            def _reply(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                admin.calls.append((self.path, None))
                if not admin.dev_mode:
                    return self._reply(404, {"detail": "Not Found"})
                self._reply(200, {"weight_version": admin.version})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                admin.calls.append((self.path, body))
                if not admin.dev_mode:
                    return self._reply(404, {"detail": "Not Found"})
                if admin.failing and self.path.startswith(admin.failing):
                    return self._reply(500, {"error": "scripted failure"})
                if self.path == "/update_weight_version" and not admin.stale:
                    admin.version = body["new_version"]
                self._reply(200, {"ok": True})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_push_reloads_every_server_from_the_folder_and_checks_the_version_they_report(tmp_path):
    servers = [FakeVLLMAdmin(), FakeVLLMAdmin()]
    try:
        push_weights_to_servers([s.url for s in servers], tmp_path, "cm2-3", timeout_s=10)
    finally:
        for s in servers:
            s.close()
    for s in servers:
        assert [path for path, _ in s.calls] == ["/pause?mode=wait", "/collective_rpc", "/reset_prefix_cache",
                                                 "/update_weight_version", "/resume", "/weight_info"]
        assert s.calls[1][1] == {"method": "reload_weights", "kwargs": {"weights_path": str(tmp_path.resolve())}}
        assert s.version == "cm2-3"


def test_a_server_that_keeps_its_old_weights_fails_the_push_by_name(tmp_path):
    good, stale = FakeVLLMAdmin(), FakeVLLMAdmin(stale=True)
    try:
        with pytest.raises(RuntimeError, match=f"{server_root(stale.url)} reports 'initial'"):
            push_weights_to_servers([good.url, stale.url], tmp_path, "cm2-1", timeout_s=10)
    finally:
        good.close()
        stale.close()
    assert ("/resume", {}) in stale.calls  # the stale server was not left paused


@pytest.mark.parametrize("failing", ["/pause", "/collective_rpc"])
def test_a_push_that_fails_midway_still_resumes_the_server(tmp_path, failing):
    server = FakeVLLMAdmin(failing=failing)
    try:
        with pytest.raises(RuntimeError, match="HTTP 500"):
            push_weights_to_servers([server.url], tmp_path, "cm2-1", timeout_s=10)
    finally:
        server.close()
    assert [path for path, _ in server.calls][-1] == "/resume" and server.version == "initial"


def test_a_server_without_dev_mode_gets_a_fix_not_a_traceback(tmp_path):
    server = FakeVLLMAdmin(dev_mode=False)
    try:
        with pytest.raises(RuntimeError, match="VLLM_SERVER_DEV_MODE=1"):
            push_weights_to_servers([server.url], tmp_path, "cm2-1", timeout_s=10)
    finally:
        server.close()


# -- config and metrics ----------------------------------------------------------------------------------------


def test_old_logprobs_auto_recomputes_exactly_with_the_vllm_engine():
    assert GRPOConfig().recompute_old_logprobs is False
    assert GRPOConfig(rollout_engine="vllm").recompute_old_logprobs is True
    assert GRPOConfig(rollout_engine="vllm", old_logprobs="sampler").recompute_old_logprobs is False
    assert GRPOConfig(old_logprobs="recompute").recompute_old_logprobs is True


@pytest.mark.parametrize("values, field", [
    ({"rollout_endpoint": "vllm:http://127.0.0.1:1/v1#m"}, "rollout_endpoint"),  # without rollout_engine vllm
    ({"rollout_engine": "vllm", "rollout_endpoint": "replay"}, "rollout_endpoint"),
    ({"rollout_engine": "vllm", "lora": True}, "lora"),
    ({"rollout_engine": "sglang"}, "rollout_engine"),
    ({"rollout_engine": "vllm", "vllm_gpu_memory_utilization": 1.5}, "vllm_gpu_memory_utilization"),
    ({"rollout_engine": "vllm", "vllm_tensor_parallel_size": 0}, "vllm_tensor_parallel_size"),
    ({"data_parallel": "zero3"}, "data_parallel"),
    ({"rollout_engine": "vllm", "max_new_tokens": 64, "vllm_max_model_len": 64}, "vllm_max_model_len"),
    ({"data_parallel": "fsdp2", "lora": True}, "data_parallel"),
])
def test_bad_rollout_engine_settings_name_the_field_and_the_fix(values, field):
    with pytest.raises(ConfigError, match=field) as error:
        GRPOConfig(**values).validate()
    assert "Fix" in str(error.value) or "fix" in str(error.value)


def test_the_logprob_gap_covers_loss_tokens_only():
    sequence = TokenSequence()
    sequence.extend([1, 2, 3], trainable=False)
    sequence.extend([4, 5], trainable=True, logprobs=[-1.0, -2.0])
    sampled = [list(sequence.old_logprobs)]
    sequence.old_logprobs = [0.0, 0.0, 0.0, -1.25, -1.5]
    gap = logprob_gap([sequence], sampled)
    assert gap == {"mean": pytest.approx(0.375), "max": pytest.approx(0.5), "tokens": 2}
    assert logprob_gap([], []) is None


def test_an_unknown_engine_in_an_hf_agent_spec_is_a_spec_error(tmp_path):
    from agents import make_agent
    from cm2_env.errors import SpecError

    folder = micro_model_dir(tmp_path / "m")
    with pytest.raises(SpecError, match="engine='vllm'"):
        make_agent(f"hf:{folder}", engine="tgi")


def test_engine_weights_keep_every_tensor_of_a_tied_model_for_the_reload(tmp_path):
    from safetensors.torch import load_file

    from agents.vllm_agent import save_engine_weights
    from train.policy import load_model

    model = load_model(str(micro_model_dir(tmp_path / "m")))
    assert model.config.tie_word_embeddings  # the case save_pretrained would drop lm_head for
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "stale.safetensors").write_bytes(b"old")
    save_engine_weights(model, tmp_path / "w", max_shard_bytes=200_000)
    index = json.loads((tmp_path / "w" / "model.safetensors.index.json").read_text())
    state = model.state_dict()
    assert set(index["weight_map"]) == set(state) and "lm_head.weight" in index["weight_map"]
    assert len(set(index["weight_map"].values())) > 1 and not (tmp_path / "w" / "stale.safetensors").exists()
    loaded = {}
    for name in set(index["weight_map"].values()):
        loaded.update(load_file(str(tmp_path / "w" / name)))
    assert all(loaded[k].equal(v) for k, v in state.items())
    assert (tmp_path / "w" / "config.json").is_file()


def test_a_prompt_too_long_for_the_server_truncates_the_episode_instead_of_failing_it(tokenizer):
    from agents.base import ContextLimitExceeded
    from tests.support.scripted_server import Fault

    def respond(request):
        return Fault.http(400, message="This model's maximum context length is 2048 tokens. However, you "
                                       "requested 2090 tokens.")

    with ScriptedServer(respond) as server:
        agent = RemoteVLLMAgent(server.spec, tokenizer, max_retries=0)
        with pytest.raises(ContextLimitExceeded, match="maximum context length"):
            asyncio.run(agent.act([{"role": "user", "content": "hi"}], []))


def test_a_colocated_engine_under_several_ranks_is_refused_with_the_fix(monkeypatch, tmp_path):
    from train.rollout_engine import VLLMRollouts

    monkeypatch.setenv("WORLD_SIZE", "2")
    engine = VLLMRollouts(GRPOConfig(model=str(tmp_path), rollout_engine="vllm"))
    with pytest.raises(RuntimeError, match="rollout_endpoint"):
        engine._engine()
