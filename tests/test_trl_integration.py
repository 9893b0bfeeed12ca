"""CM2 checklist rewards inside TRL's GRPOTrainer (cm2_env.integrations.trl).

The unit tests drive the generated environments the way TRL does (``reset(**row)``, the tool methods of one message
gathered on one event loop, then the reward function) and compare with the same actions sent straight to
``CM2ToolUseEnv``. Two tests run TRL's GRPOTrainer itself: one with a scripted policy (TRL's generation replaced by
fixed replies, so TRL's own tool loop, parser and reward path run on known calls) and one with a micro model."""

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
from cm2_env.integrations.trl import (TRL_LIMIT, CM2Environments, _unrouted, cm2_reward,  # noqa: E402
                                      environment_class)
from cm2_env.toolcalls import render_message_hermes  # noqa: E402

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


CALLS = "tooltalk/Calendar-Reminder-Weather-ModifyEvent-1"  # a first turn of tool calls, then a reply


def _one_dialogue(dialogue_id, **options):
    """The training row of one dialogue and a fresh environment instance for it, as TRL's pool would make."""
    cm2 = CM2Environments("tooltalk", dialogue_ids=[dialogue_id], **options)
    row = cm2.rows()[0]
    return row, cm2.environment_factory[row["environment"]]()


def _first_call(dialogue_id):
    call = _first_turn(dialogue_id)[0]["tool_calls"][0]["function"]
    return call["name"], json.loads(call["arguments"])


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
        env_tools = {t["function"]["name"]: t["function"] for t in _row_tools(row)}
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


def _row_tools(row):
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
        tools = json.dumps(_row_tools(row), sort_keys=True)
        assert same_tools.setdefault(row["environment"], tools) == tools
    assert len(set(cm2.environment_factory)) == len(same_tools) < len(rows)
    assert len(cm2.dataset()) == len(rows)


@pytest.mark.parametrize("dialogue_id", [
    CALLS,  # tool calls, then a reply
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
    row, instance = _one_dialogue(CALLS)
    name, arguments = _first_call(CALLS)

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
    dialogue_id = CALLS
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
    env.close()
    assert reward == direct["R"]


def test_calls_after_the_env_ended_the_episode_are_answered_without_reaching_it():
    dialogue_id = CALLS
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
    assert instance._info["failed"] and logged == {"cm2/failed": 1.0, "cm2/unrouted_calls": 0.0}


def test_a_call_no_json_can_hold_is_answered_by_the_env_as_malformed_text():
    """NaN arguments (Python's json reads them): the message's text is malformed for the env, which answers
    every call of it with the parse error and runs none -- exactly what an action with such text gets in our own
    rollouts -- instead of the tool call raising inside TRL's loop."""
    row, instance = _one_dialogue(CALLS)
    name, arguments = _first_call(CALLS)

    async def main():
        instance.reset(**row)
        method = _tool_methods(instance)[name]
        return await asyncio.gather(method(**arguments), method(**{**arguments, "start_time": float("nan")}))

    answers = asyncio.run(main())
    info = instance._info
    assert info["usage"]["actions"] == 1 and info["usage"]["tool_calls"] == 0 and info["usage"]["invalid_calls"] == 1
    assert [json.loads(a)["kind"] for a in answers] == ["invalid_json"] * 2


def test_cm2_reward_without_cm2_environments_says_how_to_pass_them():
    with pytest.raises(ValueError, match="environment_factory=CM2Environments"):
        asyncio.run(cm2_reward([[]], [[{"role": "assistant", "content": "x"}]]))


def test_a_tool_that_trl_cannot_expose_is_refused_naming_it():
    bad = [{"type": "function", "function": {"name": "reset", "description": "x", "parameters": {}}}]
    with pytest.raises(ValueError, match=r"dialogue d1: tool 'reset'.*Fix: rename"):
        environment_class("x", bad, source="dialogue d1")
    weird = [{"type": "function", "function": {"name": "f", "description": "x", "parameters": {
        "type": "object", "properties": {"a": {"type": "datetime"}}}}}]
    with pytest.raises(ValueError, match=r"tool 'f', parameter 'a'.*'datetime'"):
        environment_class("x", weird)
    keyword = [{"type": "function", "function": {"name": "f", "description": "x", "parameters": {
        "type": "object", "properties": {"from": {"type": "string"}}}}}]
    with pytest.raises(ValueError, match=r"tool 'f': parameter 'from'.*keyword"):
        environment_class("x", keyword)
    with pytest.raises(ValueError, match="defined twice"):
        environment_class("x", [_tool("g"), _tool("g")])
    with pytest.raises(ValueError, match="max_turns is fixed at 1"):
        CM2Environments("tooltalk", max_turns=2)
    with pytest.raises(ValueError, match="invalid_call_policy='terminate' cannot hold under TRL"):
        CM2Environments("tooltalk", invalid_call_policy="terminate")


def _tool(name):
    return {"type": "function", "function": {"name": name, "description": "x", "parameters": {}}}


class _Received:
    """Per step: the rewards TRL recorded for the step's rollouts (its ``_logs``, what its advantages were
    computed from) next to each rollout's env info, as the reward function saw it."""

    def __init__(self):
        self.infos, self.steps, self.trainer = [], [], None

    async def reward(self, prompts, completions, environments, **kwargs):
        rewards = await cm2_reward(prompts, completions, environments, **kwargs)
        self.infos.append([dict(e._info, unrouted=_unrouted(c, e._routed)) for c, e in zip(completions, environments)])
        return rewards

    def callback(self):
        from transformers import TrainerCallback

        received = self

        class Record(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                received.steps.append(list(received.trainer._logs["rewards"]["cm2_reward"]))

        return Record()


def _trainer(cls, model, tokenizer, cm2, received, tmp_path, **config):
    from trl import GRPOConfig

    received.reward.__func__.__name__ = "cm2_reward"
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, per_device_train_batch_size=4,
                      num_generations=4, learning_rate=1e-3, logging_steps=1, report_to="none", save_strategy="no",
                      gradient_checkpointing=False, seed=0, beta=0.0, **config)
    trainer = cls(model=model, reward_funcs=received.reward, args=args, train_dataset=cm2.dataset(),
                  environment_factory=cm2.environment_factory, processing_class=tokenizer,
                  callbacks=[received.callback()])
    received.trainer = trainer
    return trainer


def test_trl_s_tool_loop_on_scripted_replies_reaches_the_env_one_message_per_action(tmp_path):
    """TRL's generation is replaced by fixed replies (a scripted policy); everything else is TRL's own: its
    response parser, tool loop, reward call and loss. Four rollouts: the reference; two calls in one message;
    hostile calls (unknown tool, non-object arguments, an unknown argument); calls until TRL's iteration limit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from cm2_env.integrations.trl import add_tool_call_parser
    from tests.support.tiny_models import micro_model_dir

    dialogue_id = CALLS
    reference = _first_turn(dialogue_id)
    query = render_message_hermes(reference[0])
    reply = reference[-1]["content"] + "<|im_end|>"
    hostile = "\n".join([
        '<tool_call>\n{"name": "QueryCalendar", "arguments": "a string"}\n</tool_call>',
        '<tool_call>\n{"name": "NoSuchTool", "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": "QueryCalendar", "arguments": {"start_time": "x", "end_time": "y", "z": 1}}'
        '\n</tool_call>',
        query])
    scripts = [[query + "<|im_end|>", reply], [query + "\n" + query + "<|im_end|>", reply],
               [hostile + "<|im_end|>", reply], [query + "<|im_end|>"] * 3]
    path = micro_model_dir(tmp_path / "micro", seed=0)
    tokenizer = add_tool_call_parser(AutoTokenizer.from_pretrained(path))

    class ScriptedGRPO(GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            out = []
            for k, ids in enumerate(prompt_ids):
                text = tokenizer.decode(ids, skip_special_tokens=False)
                turn = text.count("<|im_start|>assistant") - 1
                rollout = k if turn == 0 else int(text.split("[rollout ", 1)[1][0])
                answer = scripts[rollout][min(turn, len(scripts[rollout]) - 1)]
                tag = f"[rollout {rollout}]" if turn == 0 else ""
                out.append(tokenizer(tag + answer, add_special_tokens=False)["input_ids"])
            return out, None

    cm2 = CM2Environments("tooltalk", dialogue_ids=[dialogue_id], max_actions_per_turn=5)
    received = _Received()
    trainer = _trainer(ScriptedGRPO, AutoModelForCausalLM.from_pretrained(path), tokenizer, cm2, received,
                       tmp_path, max_steps=1, max_completion_length=2048, max_tool_calling_iterations=2)
    trainer.train()

    (infos,), (rewards,) = received.infos, received.steps
    assert rewards == [info["R"] for info in infos]  # what TRL's advantages used is the env's R
    first, both, bad, looping = infos
    assert first["R"] == _direct(dialogue_id, reference)["R"] > 0 and first["usage"]["actions"] == 2
    assert both["usage"]["actions"] == 2 and both["usage"]["tool_calls"] == 2
    assert [len(m.get("tool_calls") or []) for m in both["messages"] if m["role"] == "assistant"][0] == 2
    assert bad["usage"]["actions"] == 2 and bad["usage"]["tool_calls"] == 2 and bad["usage"]["invalid_calls"] == 1
    assert bad["unrouted"] == 2  # the string arguments and the unknown tool: TRL answered them itself
    # max_tool_calling_iterations=2: two messages' calls run, the third message's call is left open
    assert looping["end_reason"] == TRL_LIMIT and looping["usage"]["actions"] == 2 and looping["unrouted"] == 1
    log = next(h for h in trainer.state.log_history if "cm2/unrouted_calls" in h)
    assert log["cm2/unrouted_calls"] == pytest.approx(3 / 4) and log["cm2/failed"] == 0


def test_two_trl_grpo_steps_receive_exactly_the_env_s_rewards(tmp_path):
    """Two real GRPOTrainer steps (TRL's generation and loss) on a micro model after a short SFT."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

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
    received = _Received()
    tokenizer = add_tool_call_parser(AutoTokenizer.from_pretrained(tmp_path / "sft"))
    trainer = _trainer(GRPOTrainer, AutoModelForCausalLM.from_pretrained(tmp_path / "sft"), tokenizer, cm2, received,
                       tmp_path, max_steps=2, max_completion_length=96, max_tool_calling_iterations=2)
    trainer.train()

    assert len(received.infos) == len(received.steps) == 2
    logged = [h for h in trainer.state.log_history if "rewards/cm2_reward/mean" in h]
    for infos, rewards, log in zip(received.infos, received.steps, logged):
        assert len(rewards) == 4 and all("end_reason" in info and not info["failed"] for info in infos)
        assert rewards == [info["R"] for info in infos]  # what TRL received is the env's R, rollout by rollout
        assert log["rewards/cm2_reward/mean"] == pytest.approx(sum(rewards) / 4, abs=1e-6)
        assert len({info["dialogue_id"] for info in infos}) == 1  # one group = one dialogue, TRL's 4 generations
