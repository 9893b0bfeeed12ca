"""CM2 checklist rewards inside TRL's GRPOTrainer (cm2_env.integrations.trl).

The unit tests drive the generated environments the way TRL does (``reset(**row)``, the tool methods of one message
gathered on one event loop, then the reward function) and compare with the same actions sent straight to
``CM2ToolUseEnv``. The last test runs two real TRL GRPO steps on a micro model."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import socket

import pytest

pytest.importorskip("trl", reason="the trl extra is not installed (pip install 'cm2[trl]')")

from cm2_env.data import load_dialogues  # noqa: E402
from cm2_env.env import CM2ToolUseEnv  # noqa: E402
from cm2_env.integrations.trl import TRL_LIMIT, CM2Environments, cm2_reward, environment_class  # noqa: E402
from cm2_env.toolcalls import render_message_hermes  # noqa: E402

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def _first_turn(dialogue_id):
    """The reference assistant messages of the dialogue's first turn."""
    dialogue = next(d for d in load_dialogues("tooltalk") if d.id == dialogue_id)
    messages = dialogue.to_record()["messages"]
    start = next(i for i, m in enumerate(messages) if m["role"] == "user")
    turn = []
    for message in messages[start + 1:]:
        if message["role"] == "user":
            break
        if message["role"] == "assistant":
            turn.append(message)
    return turn


def _tool_methods(instance):
    return {name: getattr(instance, name) for name, _ in inspect.getmembers(type(instance), inspect.isfunction)
            if name != "reset" and not name.startswith("_")}


async def _play_like_trl(instance, row, messages):
    """What TRL does with a rollout whose assistant messages are ``messages``: reset, the calls of each message
    gathered together, tool results appended, then the reward function on the completion."""
    instance.reset(**row)
    tools = _tool_methods(instance)
    completion = []
    for message in messages:
        calls = message.get("tool_calls") or []
        completion.append({"role": "assistant", "content": message.get("content") or "",
                           **({"tool_calls": calls} if calls else {})})
        if calls:
            results = await asyncio.gather(*(tools[c["function"]["name"]](**json.loads(c["function"]["arguments"]))
                                             for c in calls))
            completion += [{"role": "tool", "name": c["function"]["name"], "content": r}
                           for c, r in zip(calls, results)]
    rewards = await cm2_reward([row["prompt"]], [completion], [instance])
    return rewards[0], completion


def _direct(dialogue_id, messages, **options):
    env = CM2ToolUseEnv("tooltalk", max_turns=1, normaliser="reached", **options)
    env.reset(options={"dialogue_id": dialogue_id})
    info = None
    for message in messages:
        *_, terminated, truncated, info = env.step(render_message_hermes(message))
        if terminated or truncated:
            break
    env.close()
    return info


def test_the_generated_tool_methods_give_transformers_the_env_s_own_tool_schemas():
    from transformers.utils import get_json_schema

    cm2 = CM2Environments("tooltalk")
    checked = 0
    for row in cm2.rows():
        env_tools = {t["function"]["name"]: t["function"] for t in row_tools(cm2, row)}
        instance = cm2.environment_factory[row["environment"]]()
        methods = _tool_methods(instance)
        assert set(methods) == set(env_tools)
        for name, method in methods.items():
            derived = get_json_schema(method)["function"]
            expected = env_tools[name]
            assert derived["description"] == expected["description"]
            params, want = derived["parameters"], expected["parameters"]
            assert sorted(params.get("required", [])) == sorted(want.get("required", []))
            assert set(params["properties"]) == set(want["properties"])
            for param, schema in want["properties"].items():
                got = params["properties"][param]
                assert got["type"] == schema["type"] and got.get("enum") == schema.get("enum"), (name, param)
                assert got.get("items") == schema.get("items") and got["description"] == schema["description"]
                checked += 1
    assert checked > 100


def row_tools(cm2, row):
    env = CM2ToolUseEnv("tooltalk")
    _, info = env.reset(options={"dialogue_id": row["dialogue_id"]})
    env.close()
    return info["tools"]


def test_the_dataset_holds_the_env_s_first_observation_and_one_environment_per_tool_set():
    cm2 = CM2Environments("tooltalk")
    rows = cm2.rows()
    dialogues = [d for d in load_dialogues("tooltalk") if d.checklist() and d.checklist()[0]]
    assert [r["dialogue_id"] for r in rows] == [d.id for d in dialogues]
    env = CM2ToolUseEnv("tooltalk")
    for row in rows[:10]:
        _, info = env.reset(options={"dialogue_id": row["dialogue_id"]})
        assert row["prompt"] == [{"role": m["role"], "content": m["content"]} for m in info["messages"]]
    same_tools = {}
    for row in rows:
        tools = json.dumps(row_tools(cm2, row), sort_keys=True)
        assert same_tools.setdefault(row["environment"], tools) == tools
    assert len(set(cm2.environment_factory)) == len(same_tools) < len(rows)
    assert len(cm2.dataset()) == len(rows)


@pytest.mark.parametrize("dialogue_id", [
    "tooltalk/Calendar-Reminder-Weather-ModifyEvent-1",  # tool calls, then a reply
    "tooltalk/AccountTools-Calendar-Weather-RegisterUser-0",  # a reply only
])
def test_the_reference_first_turn_earns_the_env_s_R_through_the_trl_environment(dialogue_id):
    cm2 = CM2Environments("tooltalk", dialogue_ids=[dialogue_id])
    row = cm2.rows()[0]
    instance = cm2.environment_factory[row["environment"]]()
    messages = _first_turn(dialogue_id)
    reward, completion = asyncio.run(_play_like_trl(instance, row, messages))
    expected = _direct(dialogue_id, messages)
    assert reward == expected["R"] > 0
    assert instance._info["messages"] == expected["messages"]
    assert instance._info["usage"]["actions"] == len(messages)
    assert [m["content"] for m in completion if m["role"] == "tool"] == \
        [m["content"] for m in expected["messages"] if m["role"] == "tool"]


def test_the_calls_of_one_message_are_one_env_action_and_later_calls_their_own():
    dialogue_id = "tooltalk/Calendar-Reminder-Weather-ModifyEvent-1"
    cm2 = CM2Environments("tooltalk", dialogue_ids=[dialogue_id])
    row = cm2.rows()[0]
    instance = cm2.environment_factory[row["environment"]]()
    call = _first_turn(dialogue_id)[0]["tool_calls"][0]["function"]
    name, arguments = call["name"], json.loads(call["arguments"])

    async def main():
        instance.reset(**row)
        method = _tool_methods(instance)[name]
        together = await asyncio.gather(method(**arguments), method(**arguments), method(**arguments))
        alone = await method(**arguments)
        return together, alone

    together, alone = asyncio.run(main())
    info = instance._info
    assert info["usage"]["actions"] == 2 and info["usage"]["tool_calls"] == 4
    assert [len(m.get("tool_calls") or []) for m in info["messages"] if m["role"] == "assistant"] == [3, 1]
    assert together == [alone] * 3 and json.loads(alone)  # the recorded response, answered to each call


def test_a_completion_that_ends_with_open_calls_is_truncated_and_pays_what_was_satisfied():
    dialogue_id = "tooltalk/Calendar-Reminder-Weather-ModifyEvent-1"
    cm2 = CM2Environments("tooltalk", dialogue_ids=[dialogue_id])
    row = cm2.rows()[0]
    instance = cm2.environment_factory[row["environment"]]()
    calls_only = [m for m in _first_turn(dialogue_id) if m.get("tool_calls")]
    reward, _ = asyncio.run(_play_like_trl(instance, row, calls_only))
    info = instance._info
    assert info["end_reason"] == TRL_LIMIT and reward == info["R"]
    env = CM2ToolUseEnv("tooltalk", max_turns=1, normaliser="reached")
    env.reset(options={"dialogue_id": dialogue_id})
    for message in calls_only:
        env.step(render_message_hermes(message))
    _, direct = env.truncate(TRL_LIMIT)
    assert reward == direct["R"]


def test_calls_after_the_env_ended_the_episode_are_answered_without_reaching_it():
    dialogue_id = "tooltalk/Calendar-Reminder-Weather-ModifyEvent-1"
    cm2 = CM2Environments("tooltalk", dialogue_ids=[dialogue_id], max_actions_per_turn=1)
    row = cm2.rows()[0]
    instance = cm2.environment_factory[row["environment"]]()
    message = next(m for m in _first_turn(dialogue_id) if m.get("tool_calls"))
    reward, completion = asyncio.run(_play_like_trl(instance, row, [message, message, {"content": "done"}]))
    info = instance._info
    assert info["end_reason"] == "max_actions_per_turn" and info["usage"]["actions"] == 1
    assert "the episode has ended (max_actions_per_turn)" in completion[-2]["content"]
    assert reward == info["R"] == _direct(dialogue_id, [message], max_actions_per_turn=1)["R"]


def test_a_failed_episode_gives_trl_none_and_is_counted():
    with socket.socket() as sock:  # a port with nothing listening: the judge fails
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cm2 = CM2Environments("tooltalk", judge=f"openai:http://127.0.0.1:{port}/v1#m",
                          judge_options={"llm_options": {"max_retries": 0, "timeout_s": 2}},
                          dialogue_ids=["tooltalk/AccountTools-Calendar-Weather-RegisterUser-0"])
    row = cm2.rows()[0]
    instance = cm2.environment_factory[row["environment"]]()
    logged = {}

    async def main():
        instance.reset(**row)
        try:
            return await cm2_reward([row["prompt"]], [[{"role": "assistant", "content": "hello"}]], [instance],
                                    log_metric=logged.__setitem__)
        finally:
            await cm2.aclose()

    assert asyncio.run(main()) == [None]
    assert instance._info["failed"] and logged == {"cm2/failed": 1.0}


def test_a_tool_that_trl_cannot_expose_is_refused_naming_it():
    bad = [{"type": "function", "function": {"name": "reset", "description": "x", "parameters": {}}}]
    with pytest.raises(ValueError, match=r"dialogue d1: tool 'reset'.*Fix: rename"):
        environment_class("x", bad, source="dialogue d1")
    weird = [{"type": "function", "function": {"name": "f", "description": "x", "parameters": {
        "type": "object", "properties": {"a": {"type": "datetime"}}}}}]
    with pytest.raises(ValueError, match=r"tool 'f', parameter 'a'.*'datetime'"):
        environment_class("x", weird)
    with pytest.raises(ValueError, match="max_turns is fixed at 1"):
        CM2Environments("tooltalk", max_turns=2)


def test_two_trl_grpo_steps_receive_exactly_the_env_s_rewards(tmp_path):
    """Two real GRPOTrainer steps (TRL's generation, tool loop and loss) on a micro model after a short SFT."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from cm2_env.integrations.trl import add_tool_call_parser
    from tests.support.tiny_models import MICRO, micro_model_dir
    from train.config import SFTConfig
    from train.sft import run_sft

    ids = ["tooltalk/AccountTools-Calendar-Weather-RegisterUser-0", "tooltalk/Calendar-Reminder-Weather-ModifyEvent-1"]
    base = micro_model_dir(tmp_path / "base", seed=0, shape=replace(MICRO, vocab_size=2048))
    sft = SFTConfig(model=str(base), output_dir=str(tmp_path / "sft"), epochs=40.0, learning_rate=3e-3,
                    batch_size=2, micro_batch_tokens=4096, max_length=2048, bf16="false", warmup_ratio=0.0, seed=0,
                    progress=False).validate()
    run_sft(sft, dialogues=[d for d in load_dialogues("tooltalk") if d.id in ids])
    cm2 = CM2Environments("tooltalk", dialogue_ids=ids, max_actions_per_turn=3)
    seen = []

    async def recording(prompts, completions, environments, **kwargs):
        rewards = await cm2_reward(prompts, completions, environments, **kwargs)
        seen.append((rewards, [dict(e._info) for e in environments]))
        return rewards

    recording.__name__ = "cm2_reward"
    tokenizer = add_tool_call_parser(AutoTokenizer.from_pretrained(tmp_path / "sft"))
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=96, max_steps=2, learning_rate=1e-3, logging_steps=1,
                      report_to="none", save_strategy="no", gradient_checkpointing=False,
                      max_tool_calling_iterations=2, seed=0, beta=0.0)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(tmp_path / "sft"), reward_funcs=recording,
                          args=args, train_dataset=cm2.dataset(), environment_factory=cm2.environment_factory,
                          processing_class=tokenizer)
    trainer.train()

    assert len(seen) == 2
    logged = [h for h in trainer.state.log_history if "rewards/cm2_reward/mean" in h]
    assert len(logged) == 2
    for (rewards, infos), log in zip(seen, logged):
        assert len(rewards) == 4 and all("end_reason" in info and not info["failed"] for info in infos)
        assert rewards == [info["R"] for info in infos]  # what TRL received is the env's R, rollout by rollout
        assert log["rewards/cm2_reward/mean"] == pytest.approx(sum(rewards) / 4, abs=1e-6)
        assert log["cm2/failed"] == 0
        assert len({info["dialogue_id"] for info in infos}) == 1  # one group = one dialogue, TRL's 4 generations
