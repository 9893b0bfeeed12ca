"""Agents: the TransformersAgent's batching and token bookkeeping, and the ReplayAgent's reference actions."""

import asyncio

import pytest

from agents import ReplayAgent, make_agent
from agents.base import Agent
from cm2_env.data import dialogue_turns, load_dialogues
from cm2_env.toolcalls import parse


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.tiny_model import build_tiny

    path = build_tiny(tmp_path_factory.mktemp("tiny"), preset="vllm", seed=0)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def tooltalk():
    return load_dialogues("tooltalk")


def test_concurrent_acts_are_generated_in_one_batch_with_exact_token_bookkeeping(tiny):
    import torch

    from agents.transformers_agent import TransformersAgent

    model, tokenizer = tiny
    agent = TransformersAgent(model, tokenizer, max_new_tokens=12, temperature=1.0, seed=3)
    conversations = [[{"role": "user", "content": "hello " * (i + 1)}] for i in range(5)]
    tools = [{"type": "function", "function": {"name": "Ping", "parameters": {"type": "object", "properties": {}}}}]

    async def main():
        return await asyncio.gather(*(agent.act(c, tools) for c in conversations))

    steps = asyncio.run(main())
    assert agent.batches == [5]
    for conversation, step in zip(conversations, steps):
        expected_prompt = tokenizer.apply_chat_template(conversation, tools=tools, add_generation_prompt=True,
                                                        tokenize=True, return_dict=False)
        assert step.prompt_ids == list(expected_prompt)
        assert 1 <= len(step.completion_ids) <= 12
        assert len(step.logprobs) == len(step.completion_ids)
        assert all(lp <= 0.0 for lp in step.logprobs)
        if len(step.completion_ids) < 12:
            assert step.completion_ids[-1] == agent.eos_id
        # The recorded logprobs are those of the sampling distribution: recompute them with a forward pass.
        ids = torch.tensor([step.prompt_ids + step.completion_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(step.prompt_ids) - 1 : -1].float()
        recomputed = torch.log_softmax(logits, -1).gather(-1, torch.tensor(step.completion_ids)[:, None])[:, 0]
        assert torch.allclose(recomputed, torch.tensor(step.logprobs), atol=1e-4)


def test_greedy_generation_is_deterministic_and_independent_of_batch_composition(tiny):
    from agents.transformers_agent import TransformersAgent

    model, tokenizer = tiny
    agent = TransformersAgent(model, tokenizer, max_new_tokens=8, temperature=0.0)
    alone = asyncio.run(agent.act([{"role": "user", "content": "hi"}], []))

    async def together():
        return await asyncio.gather(agent.act([{"role": "user", "content": "hi"}], []),
                                    agent.act([{"role": "user", "content": "a much longer message here"}], []))

    batched = asyncio.run(together())[0]
    assert alone.completion_ids == batched.completion_ids
    assert isinstance(agent, Agent)


def test_replay_agent_plays_each_reference_action_of_a_turn_in_order(tooltalk):
    dialogue = next(d for d in tooltalk if any(len(t.actions) > 2 for t in dialogue_turns(d)))
    turn = next(t for t in dialogue_turns(dialogue) if len(t.actions) > 2)
    agent = make_agent("replay", tooltalk)
    for taken, action in enumerate(turn.actions):
        step = asyncio.run(agent.act([], [], context={"dialogue_id": dialogue.id, "turn": turn.index,
                                                      "action": taken}))
        parsed = parse(step.text)
        assert [c.name for c in parsed.calls] == [c.function.name for c in action.assistant.calls]
        assert [c.arguments for c in parsed.calls] == [c.function.parsed_arguments() for c in action.assistant.calls]
        if action.is_final_reply:
            assert parsed.is_final_reply and parsed.content == action.assistant.text.strip()


def test_replay_agent_without_context_says_what_it_needs(tooltalk):
    with pytest.raises(ValueError, match="dialogue_id"):
        asyncio.run(ReplayAgent(tooltalk[:1]).act([], []))


def test_an_unknown_agent_spec_lists_the_valid_forms():
    with pytest.raises(ValueError, match="replay"):
        make_agent("gpt-4")
