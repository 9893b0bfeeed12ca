"""Seeded per-action sampling: draws depend on the action's key alone, never on batch composition or order."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents.token_path import sample_next, sampling_seed, token_uniform, token_uniforms

REPO = Path(__file__).resolve().parents[1]


def test_a_sampling_seed_is_the_same_in_every_process_and_differs_between_keys():
    script = "from agents.token_path import sampling_seed; print(sampling_seed(7, 'tooltalk/UserLogin-easy', 3, 2))"
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
        outputs.add(int(done.stdout))
    assert outputs == {sampling_seed(7, "tooltalk/UserLogin-easy", 3, 2)}
    keys = [(s, d, g, a) for s in range(3) for d in ("a", "b") for g in range(4) for a in range(5)]
    assert len({sampling_seed(*key) for key in keys}) == len(keys)
    assert all(0 <= sampling_seed(*key) < 2**63 for key in keys)


def test_token_uniforms_are_uniform_on_the_unit_interval():
    draws = sorted(token_uniform(seed, index) for seed in range(200) for index in range(50))
    assert all(0.0 <= u < 1.0 for u in draws)
    n = len(draws)
    ks = max(max(abs((i + 1) / n - u), abs(i / n - u)) for i, u in enumerate(draws))
    assert ks < 1.63 / math.sqrt(n)  # the 1% critical value of the Kolmogorov-Smirnov statistic
    assert token_uniforms([5, 6], 3) == [token_uniform(5, 3), token_uniform(6, 3)]


def test_sampled_frequencies_follow_softmax_of_logits_over_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0]])
    temperature = 0.7
    expected = torch.softmax(logits[0] / temperature, -1)
    n = 20_000
    counts = torch.zeros(5)
    for i in range(n):
        token, logprob = sample_next(logits, [token_uniform(11, i)], temperature)
        counts[int(token)] += 1
        assert float(logprob) == pytest.approx(float(torch.log(expected[int(token)])), abs=1e-5)
    chi2 = float(((counts - n * expected) ** 2 / (n * expected)).sum())
    assert chi2 < 13.28  # the 1% critical value of chi-square with 4 degrees of freedom


def test_top_p_samples_only_the_nucleus_and_reports_the_untruncated_logprob():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = set()
    for i in range(2000):
        token, logprob = sample_next(logits, [token_uniform(3, i)], 1.0, top_p=0.7)
        seen.add(int(token))
        assert float(logprob) == pytest.approx(float(logits[0, int(token)]), abs=1e-5)
    assert seen == {0, 1}  # 0.5 + 0.3 >= 0.7: the nucleus is the two most likely tokens


def test_greedy_takes_the_argmax_and_ignores_the_uniforms():
    logits = torch.tensor([[0.1, 3.0, 2.9], [5.0, 5.0, 1.0]])
    tokens, logprobs = sample_next(logits, [0.99, 0.01], 0.0)
    assert tokens.tolist() == [1, 0]
    assert torch.allclose(logprobs, torch.log_softmax(logits, -1).gather(-1, tokens[:, None])[:, 0])


def test_a_rows_token_depends_on_its_own_logits_and_uniform_only():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=generator)
    uniforms = token_uniforms(range(6), 4)
    together, _ = sample_next(logits, uniforms, 1.0, top_p=0.9)
    alone = [int(sample_next(logits[i:i + 1], [uniforms[i]], 1.0, top_p=0.9)[0]) for i in range(6)]
    assert together.tolist() == alone
    reversed_rows, _ = sample_next(logits.flip(0), uniforms[::-1], 1.0, top_p=0.9)
    assert reversed_rows.tolist() == alone[::-1]


def test_garbage_logits_still_give_a_valid_token():
    logits = torch.tensor([[float("-inf"), 0.0, float("-inf")], [float("nan")] * 3])
    tokens, _ = sample_next(logits, [0.999999, 0.5], 1.0)
    assert tokens[0] == 1
    assert 0 <= int(tokens[1]) < 3


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.support.tiny_models import micro_model_dir

    path = micro_model_dir(tmp_path_factory.mktemp("micro"), seed=1)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _act_all(agent, conversations, seeds, order):
    async def main():
        tasks = {i: asyncio.ensure_future(agent.act(conversations[i], [], context={"sampling_seed": seeds[i]}))
                 for i in order}
        return {i: await task for i, task in tasks.items()}

    return asyncio.run(main())


def test_transformers_agent_samples_the_same_actions_whatever_the_batching_and_queue_order(micro):
    from agents.transformers_agent import TransformersAgent

    model, tokenizer = micro
    conversations = [[{"role": "user", "content": "check my calendar " * (i + 1)}] for i in range(6)]
    seeds = [sampling_seed("test", i) for i in range(6)]
    one_by_one = TransformersAgent(model, tokenizer, max_new_tokens=16, max_batch_size=1)
    batched = TransformersAgent(model, tokenizer, max_new_tokens=16, max_batch_size=64)
    a = _act_all(one_by_one, conversations, seeds, range(6))
    b = _act_all(batched, conversations, seeds, reversed(range(6)))
    assert one_by_one.batches == [1] * 6 and batched.batches == [6]
    assert [a[i].completion_ids for i in range(6)] == [b[i].completion_ids for i in range(6)]
    for i in range(6):
        assert a[i].logprobs == pytest.approx(b[i].logprobs, abs=1e-4)
    # the seed matters: other seeds give other samples
    c = _act_all(batched, conversations, [s + 1 for s in seeds], range(6))
    assert [a[i].completion_ids for i in range(6)] != [c[i].completion_ids for i in range(6)]


def test_prompts_that_start_alike_are_grouped_by_what_they_share():
    from agents.transformers_agent import prefix_groups

    a, b = list(range(100, 140)), list(range(500, 530))
    prompts = [a, b + [1], a + [7, 8, 9], a, [3, 4], a[:20] + [0] * 30]
    groups = {tuple(sorted(members)): shared for members, shared in prefix_groups(prompts)}
    # a and its extension share all of a but its last token; a[:20] + ... shares 20 < half of 39: its own group
    assert groups == {(0, 2, 3): 39, (1,): 30, (4,): 1, (5,): 49}
    for members, shared in prefix_groups(prompts):
        assert all(shared < len(prompts[i]) and prompts[i][:shared] == prompts[members[0]][:shared] for i in members)


def test_shared_prefixes_sample_what_separate_prefills_sample(micro, monkeypatch):
    import agents.transformers_agent as transformers_agent

    from agents.token_path import eos_token_id, pad_token_id

    model, tokenizer = micro
    generator = torch.Generator().manual_seed(4)
    base = [torch.randint(5, 200, (n,), generator=generator).tolist() for n in (40, 27)]
    # a group's first prompts (identical), its later prompts (the first + different tails) and an unrelated one
    prompts = [base[0]] * 3 + [base[0] + torch.randint(5, 200, (n,), generator=generator).tolist() for n in (4, 9)]
    prompts += [base[1]] * 2 + [base[1] + [7, 7]] + [torch.randint(5, 200, (33,), generator=generator).tolist()]
    prompts += [[9]]  # one token: nothing of it to encode ahead
    seeds = [sampling_seed("shared", i) for i in range(len(prompts))]
    options = dict(max_new_tokens=12, temperature=1.0, top_p=1.0, eos_id=eos_token_id(tokenizer),
                   pad_id=pad_token_id(tokenizer))
    calls = []
    original = transformers_agent.shared_prompt_cache
    monkeypatch.setattr(transformers_agent, "shared_prompt_cache",
                        lambda *args: calls.append(original(*args)) or calls[-1])
    shared = transformers_agent.generate_seeded(model, prompts, seeds, **options)
    assert calls and calls[0]  # the cache was built and used
    monkeypatch.setattr(transformers_agent, "shared_prompt_cache", lambda *args: {})
    plain = transformers_agent.generate_seeded(model, prompts, seeds, **options)
    assert [ids for ids, _ in shared] == [ids for ids, _ in plain]
    for (_, a), (_, b) in zip(shared, plain):
        assert a == pytest.approx(b, abs=1e-4)
    assert len({tuple(ids) for ids, _ in plain[:3]}) > 1  # the seeds differ, so do identical prompts' samples
