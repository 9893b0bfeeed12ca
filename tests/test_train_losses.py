"""GRPO token bookkeeping and loss math: advantages land on the right tokens, masks cover only policy tokens,
and the PPO-clip / k3-KL / entropy terms are what the formulas say."""

from __future__ import annotations

import math

import pytest
import torch

from agents.base import AgentStep
from agents.rollout import EpisodeResult
from agents.token_path import token_logprobs
from cm2_env.reward import replay_histories
from train.config import GRPOConfig
from train.grpo import action_advantages, training_sequences
from train.update import grpo_loss, k3_kl, ppo_clip_terms
from train.sequences import collate, dialogue_sequences, episode_sequences, micro_batches


def step(prompt, completion, logprobs=None):
    return AgentStep(text="", message={"role": "assistant", "content": ""}, prompt_ids=list(prompt),
                     completion_ids=list(completion), logprobs=logprobs or [-0.5] * len(completion))


# --- advantage -> token mapping ----------------------------------------------------------------------------


def test_each_action_advantage_lands_on_exactly_its_completion_tokens():
    # action 2's prompt extends action 1's prompt + completion (merged); action 3's prompt does not (new sequence)
    a1 = step([1, 2, 3], [10, 11, 99])
    a2 = step([1, 2, 3, 10, 11, 99, 4, 5], [12, 99])
    a3 = step([7, 8], [13, 14, 99])
    sequences = episode_sequences([a1, a2, a3], [0.5, -1.0, 2.0])
    assert [s.input_ids for s in sequences] == [[1, 2, 3, 10, 11, 99, 4, 5, 12, 99], [7, 8, 13, 14, 99]]
    assert sequences[0].loss_mask == [False] * 3 + [True] * 3 + [False] * 2 + [True] * 2
    assert sequences[0].advantages == [0.0] * 3 + [0.5] * 3 + [0.0] * 2 + [-1.0] * 2
    assert sequences[1].advantages == [0.0, 0.0, 2.0, 2.0, 2.0]
    assert sequences[0].old_logprobs[3:6] == [-0.5] * 3


def test_a_prompt_that_does_not_reproduce_the_sampled_ids_starts_a_new_sequence():
    # the template re-tokenised the history differently: 10, 11 became 20 -> no merge, nothing re-tokenised
    a1 = step([1, 2], [10, 11, 99])
    a2 = step([1, 2, 20, 99, 4], [12, 99])
    sequences = episode_sequences([a1, a2], [1.0, 1.0])
    assert [s.input_ids for s in sequences] == [[1, 2, 10, 11, 99], [1, 2, 20, 99, 4, 12, 99]]


def test_actions_without_token_bookkeeping_are_rejected():
    plain = AgentStep(text="hi", message={"role": "assistant", "content": "hi"})
    with pytest.raises(ValueError, match="token bookkeeping"):
        episode_sequences([plain], [1.0])


def _episode(dialogue_id, group_index, steps, record):
    return EpisodeResult(dialogue_id=dialogue_id, group_index=group_index, steps=steps, messages=[], rewards=[],
                         reward_record=record, verdicts=None, failed=record.get("failed", False), failure=None,
                         truncated=False, turns_reached=len(record["turns"]), reference_turns=2)


CHECKLIST = [
    [{"id": "C0", "weight": 0.5, "dependence": []}, {"id": "C1", "weight": 0.5, "dependence": []}],
    [{"id": "C0", "weight": 1.0, "dependence": []}],
]


def test_group_advantages_map_onto_a_hand_built_groups_actions_at_every_level():
    # rollout 0: turn 0 in 2 actions (C0 at action 1, C1 at action 2), turn 1 in 1 action (C0) -> R = (1 + 1) / 2
    # rollout 1: turn 0 in 1 action (C0 only), ended there -> R = 0.5 / 2 ; rollout 2 failed (excluded)
    records = replay_histories(CHECKLIST, [
        {"failed": False, "turns": [{"steps": 2, "first_satisfied": {"C0": 1, "C1": 2}},
                                    {"steps": 1, "first_satisfied": {"C0": 1}}]},
        {"failed": False, "turns": [{"steps": 1, "first_satisfied": {"C0": 1, "C1": None}}]},
        {"failed": True, "turns": []},
    ])
    episodes = [_episode("d", g, [step([1], [2])] * n, r) for g, (n, r) in enumerate(zip([3, 1, 0], records))]

    trajectory = action_advantages(episodes, GRPOConfig(advantage_level="trajectory", f_norm="none"))
    # R = [1.0, 0.25]; mean 0.625 (the failed rollout is not in the baseline)
    assert trajectory[0] == pytest.approx([0.375] * 3)
    assert trajectory[1] == pytest.approx([-0.375])
    assert trajectory[2] is None

    turn = action_advantages(episodes, GRPOConfig(advantage_level="turn", f_norm="none"))
    # turn 0: R_0 = [1.0, 0.5] -> +-0.25; turn 1 reached by one rollout only -> 0
    assert turn[0] == pytest.approx([0.25, 0.25, 0.0])
    assert turn[1] == pytest.approx([-0.25])

    steps = action_advantages(episodes, GRPOConfig(advantage_level="step", f_norm="none"))
    # turn 0 baselines: b_C0 = 1, b_C1 = 0.5. Rollout 0: action 1 has E = {C0, C1}: (0.5*0 + 0.5*0.5)/1 = 0.25;
    # action 2 has E = {C1}: 0.5. Turn 1: b_C0 = 0.5 -> 0.5. Rollout 1: action 1, E = {C0, C1}: (0 - 0.25) = -0.25
    assert steps[0] == pytest.approx([0.25, 0.5, 0.5])
    assert steps[1] == pytest.approx([-0.25])

    sequences = training_sequences(episodes, steps, skip_zero_advantage=False)
    assert len(sequences) == 4  # 3 actions of rollout 0 (prompts do not extend) + 1 of rollout 1; failed skipped
    assert [s.advantages[-1] for s in sequences] == pytest.approx([0.25, 0.5, 0.5, -0.25])


# --- loss masks on real chat-template renderings ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from train.tiny_model import build_tokenizer, corpus_texts

    return build_tokenizer(corpus_texts()[:400], vocab_size=1024)


DIALOGUE = [
    {"role": "system", "content": "SYSTEM-PROMPT about weather"},
    {"role": "user", "content": "USER-ONE asks for the weather"},
    {"role": "assistant", "content": "",
     "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "Weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "name": "Weather", "content": "{\"TOOL-RESULT\": 3}"},
    {"role": "assistant", "content": "It is 3 degrees in Oslo."},
    {"role": "user", "content": "USER-TWO says thanks"},
    {"role": "assistant", "content": "You are welcome."},
]
TOOLS = [{"type": "function", "function": {"name": "Weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def test_sft_masks_cover_assistant_tokens_and_nothing_of_system_user_or_tool_messages(tokenizer):
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    (sequence,) = dialogue_sequences(DIALOGUE, TOOLS, tokenizer, eos)
    full = tokenizer.apply_chat_template(DIALOGUE, tools=TOOLS, tokenize=True, return_dict=False)
    assert sequence.input_ids == list(full)[: len(sequence.input_ids)]  # the exact template ids, nothing re-split
    trained = tokenizer.decode([t for t, m in zip(sequence.input_ids, sequence.loss_mask) if m])
    assert trained == ('<tool_call>\n{"name": "Weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>'
                       "It is 3 degrees in Oslo.<|im_end|>You are welcome.<|im_end|>")
    context = tokenizer.decode([t for t, m in zip(sequence.input_ids, sequence.loss_mask) if not m])
    for marker in ("SYSTEM-PROMPT", "USER-ONE", "USER-TWO", "TOOL-RESULT", "<tool_response>", "Weather of a city"):
        assert marker in context
    assert "<|im_start|>assistant\n" in context  # the generation prompt is context, as at inference


def test_grpo_masks_cover_only_sampled_completions_when_prompts_come_from_the_chat_template(tokenizer):
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def prompt(messages):
        return list(tokenizer.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True, tokenize=True,
                                                  return_dict=False))

    first = tokenizer.encode('<tool_call>\n{"name": "Weather", "arguments": {"city": "Oslo"}}\n</tool_call>') + [eos]
    second = tokenizer.encode("It is 3 degrees in Oslo.") + [eos]
    actions = [step(prompt(DIALOGUE[:2]), first), step(prompt(DIALOGUE[:4]), second)]
    sequences = episode_sequences(actions, [1.0, -1.0])
    trained = [tokenizer.decode([t for t, m in zip(s.input_ids, s.loss_mask) if m]) for s in sequences]
    assert "".join(trained).count("<|im_end|>") == 2
    assert all(x not in "".join(trained) for x in ("SYSTEM", "USER", "TOOL-RESULT", "<tool_response>"))
    batch = collate(sequences, pad_id=0)
    assert int(batch["loss_mask"].sum()) == len(first) + len(second)


def test_collate_shifts_targets_and_masks_for_next_token_prediction():
    seqs = episode_sequences([step([1, 2, 3], [4, 5]), step([9], [8])], [1.0, 2.0])
    batch = collate(seqs, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [9, 8, 0, 0, 0]]
    assert batch["targets"][0].tolist() == [2, 3, 4, 5]
    assert batch["loss_mask"].tolist() == [[False, False, True, True], [True, False, False, False]]
    assert batch["advantages"][1].tolist() == [2.0, 0.0, 0.0, 0.0]


def test_micro_batches_respect_the_padded_token_budget_and_keep_every_sequence_once():
    lengths = [100, 30, 70, 250, 40, 90]
    batches = micro_batches(lengths, max_tokens=200)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 200


# --- PPO / KL math ------------------------------------------------------------------------------------------


def test_k3_kl_is_zero_for_equal_policies_and_matches_its_formula():
    logp = torch.tensor([-1.0, -2.0, -0.1])
    ref = torch.tensor([-1.5, -1.0, -0.1])
    r = ref - logp
    assert torch.allclose(k3_kl(logp, ref), torch.exp(r) - r - 1)
    assert torch.all(k3_kl(logp, logp) == 0)
    assert torch.all(k3_kl(logp, ref) >= 0)


def test_k3_kl_estimates_the_kl_divergence_from_samples():
    torch.manual_seed(0)
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.4, 0.4, 0.2])
    samples = torch.multinomial(p, 200_000, replacement=True)
    estimate = k3_kl(p.log()[samples], q.log()[samples]).mean()
    exact = (p * (p / q).log()).sum()
    assert float(estimate) == pytest.approx(float(exact), rel=0.03)


def test_ppo_clip_takes_the_pessimistic_term_and_flags_clipped_tokens():
    old = torch.zeros(4)
    ratio = torch.tensor([1.1, 1.5, 0.5, 1.5])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, clipped = ppo_clip_terms(ratio.log(), old, adv, clip_low=0.2, clip_high=0.2)
    # inside the range: -A*rho; A>0 above 1+eps: clipped at 1.2; A<0 below 1-eps: clipped at 0.8;
    # A<0 above the range: the unclipped (worse) term stays
    assert loss.tolist() == pytest.approx([-1.1, -1.2, 0.8, 1.5])
    assert clipped.tolist() == [False, True, True, False]


def test_clipped_tokens_give_no_gradient_and_unclipped_ones_give_minus_advantage_times_ratio():
    logp = torch.tensor([math.log(1.5), math.log(1.1)], requires_grad=True)
    loss, _ = ppo_clip_terms(logp, torch.zeros(2), torch.tensor([1.0, 1.0]), 0.2, 0.2)
    loss.sum().backward()
    assert logp.grad.tolist() == pytest.approx([0.0, -1.1])


def test_grpo_loss_is_a_token_mean_over_the_mini_batch_and_accumulates_exactly_over_micro_batches():
    torch.manual_seed(1)
    logp = torch.randn(2, 5) * 0.1 - 1
    old = logp + torch.randn(2, 5) * 0.05
    ref = logp + torch.randn(2, 5) * 0.05
    adv = torch.randn(2, 5)
    mask = torch.tensor([[True, True, False, True, False], [False, True, True, True, True]])
    n = int(mask.sum())
    full = grpo_loss(logp, old, adv, mask, n, ref_logprobs=ref, kl_coef=0.1)
    per_token, _ = ppo_clip_terms(logp, old, adv, 0.2, 0.2)
    expected = (per_token[mask].sum() + 0.1 * k3_kl(logp, ref)[mask].sum()) / n
    assert float(full.loss) == pytest.approx(float(expected), rel=1e-6)
    parts = [grpo_loss(logp[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1], n, ref_logprobs=ref[i:i + 1],
                       kl_coef=0.1) for i in range(2)]
    assert float(sum(p.loss for p in parts)) == pytest.approx(float(full.loss), rel=1e-6)
    assert sum(p.tokens for p in parts) == n


def test_kl_coefficient_without_a_reference_is_an_error():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(x, x, x, torch.ones(1, 2, dtype=torch.bool), 2, kl_coef=0.1)


def test_token_logprobs_use_the_sampling_temperature_and_report_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    logp, entropy = token_logprobs(logits, torch.tensor([0]), temperature=2.0)
    expected = torch.log_softmax(logits / 2.0, dim=-1)
    assert float(logp) == pytest.approx(float(expected[0, 0]))
    assert float(entropy) == pytest.approx(float(-(expected.exp() * expected).sum()))


def test_loss_aggregations_weigh_tokens_as_their_formulas_say():
    from train.update import sequence_token_weights

    assert sequence_token_weights([2, 6], "token-mean") == pytest.approx([1 / 8, 1 / 8])
    assert sequence_token_weights([2, 6], "seq-mean-token-mean") == pytest.approx([1 / 4, 1 / 12])
    assert sequence_token_weights([2, 6, 0], "seq-mean-token-sum-norm", length_norm=10) == pytest.approx([1 / 20] * 3)
    # seq-mean: a short sequence's tokens count as much in total as a long one's
    weights = sequence_token_weights([2, 6], "seq-mean-token-mean")
    assert 2 * weights[0] == pytest.approx(6 * weights[1]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="aggregation"):
        sequence_token_weights([1], "mean")


def test_grpo_loss_with_sequence_weights_is_the_mean_of_per_sequence_token_means():
    torch.manual_seed(2)
    logp = torch.randn(2, 4) * 0.1 - 1
    adv = torch.tensor([[1.0] * 4, [-1.0] * 4])
    mask = torch.tensor([[True, False, False, False], [True, True, True, True]])
    weights = torch.tensor([[0.5, 0, 0, 0], [0.125] * 4])
    out = grpo_loss(logp, logp.detach(), adv, mask, weights)
    per_token, _ = ppo_clip_terms(logp, logp.detach(), adv, 0.2, 0.2)
    expected = 0.5 * per_token[0, 0] + 0.5 * per_token[1].mean()
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-6)
    assert float(out.loss) == pytest.approx(0.0, abs=1e-6)  # +1 and -1 sequences balance whatever their lengths


def test_forward_batches_share_identical_prompts_and_keep_every_sequence_once():
    from train.sequences import TokenSequence, forward_batches

    def sequence(prompt, completion):
        s = TokenSequence()
        s.extend(prompt, trainable=False)
        s.extend(completion, trainable=True, logprobs=[-1.0] * len(completion))
        return s

    prompt = list(range(1, 41))
    sequences = [sequence(prompt, [50, 51]), sequence([9, 9, 9], [52]), sequence(prompt, [53, 54, 55, 56]),
                 sequence(prompt, [57]), sequence([8, 8], [58])]
    batches = forward_batches(sequences, max_tokens=50)
    assert sorted(i for members, _ in batches for i in members) == list(range(5))
    shared = [(sorted(members), n) for members, n in batches if n]
    # the prompt counted once: 39 + 2 rows x 5 (the longest suffix) <= 50, a third row would not fit
    assert shared == [([0, 2], 39)]
    assert forward_batches(sequences, max_tokens=60)[0] == ([2, 0, 3], 39)
    for members, n in batches:
        if n:
            assert n + len(members) * max(len(sequences[i]) - n for i in members) <= 50
        assert all(sequences[i].input_ids[:n] == sequences[members[0]].input_ids[:n] for i in members)


def _shared_prompt_sequences(seed: int, completions: tuple[int, ...]) -> list:
    """Sequences of one random 30-token prompt, each followed by a random completion of the given length."""
    from train.sequences import TokenSequence

    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(5, 200, (30,), generator=generator).tolist()
    sequences = []
    for n in completions:
        s = TokenSequence()
        s.extend(prompt, trainable=False)
        s.extend(torch.randint(5, 200, (n,), generator=generator).tolist(), trainable=True, logprobs=[-1.0] * n)
        sequences.append(s)
    return sequences


def test_a_shared_prompt_gives_the_same_logprobs_and_gradients_as_separate_rows(tmp_path):
    from tests.support.tiny_models import micro_model_dir
    from train.policy import load_model, selected_logprobs
    from train.sequences import forward_batches

    model = load_model(str(micro_model_dir(tmp_path, seed=3)))
    # different completion lengths: right padding inside the shared micro-batch
    sequences = _shared_prompt_sequences(seed=0, completions=(3, 7, 1, 5))
    [(members, shared)] = forward_batches(sequences, max_tokens=10_000)
    assert shared == 29 and sorted(members) == [0, 1, 2, 3]
    batch = collate([sequences[i] for i in members], pad_id=0)
    results = []
    for n in (shared, 0):
        model.zero_grad(set_to_none=True)
        logprobs, _ = selected_logprobs(model, batch, shared=n)
        logprobs.sum().backward()
        results.append((logprobs.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    (shared_logprobs, shared_grads), (plain_logprobs, plain_grads) = results
    assert shared_logprobs.shape == (16,)
    assert torch.allclose(shared_logprobs, plain_logprobs, atol=1e-5)
    for name, grad in plain_grads.items():
        assert torch.allclose(shared_grads[name], grad, atol=1e-5, rtol=1e-4), name


def test_gradient_checkpointing_trains_on_whole_rows_and_gets_the_same_logprobs_and_gradients(tmp_path):
    """Checkpointed layers drop their cache when training with gradients: a shared prompt's keys and values would be
    lost, so such a model is budgeted and run without sharing -- and gives what the uncheckpointed model gives."""
    from tests.support.tiny_models import micro_model_dir
    from train.policy import forward_micro_batches, load_model, shares_prefix
    from train.sequences import forward_batches

    model = load_model(str(micro_model_dir(tmp_path, seed=3)))
    sequences = _shared_prompt_sequences(seed=1, completions=(4, 2, 6))
    assert [shared for _, shared in forward_batches(sequences, 10_000)] == [29]
    assert [shared for _, shared in forward_batches(sequences, 10_000, share=False)] == [0]
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        assert shares_prefix(model) is not checkpointing
        with torch.no_grad():
            assert shares_prefix(model)  # no backward to replay: the cache survives
        model.zero_grad(set_to_none=True)
        runs = list(forward_micro_batches(model, sequences, 10_000, pad_id=0, bf16=False))
        total = torch.cat([logprobs for _, _, logprobs, _ in runs])
        total.sum().backward()
        results.append((total.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    assert plain.shape == (12,)
    assert torch.allclose(plain, checkpointed, atol=1e-5)
    for name, grad in plain_grads.items():
        assert torch.allclose(checkpointed_grads[name], grad, atol=1e-5, rtol=1e-4), name
