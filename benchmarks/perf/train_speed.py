"""Where the tiny CPU run's compute goes, and what the two speed-ups of the main job buy, measured in one run.

On a freshly built tiny-cpu model (train.tiny_model: ~4.5M parameters, cross-word tokenizer) this script times,
alternating the compared variants over the same inputs so that machine load hits both alike:

- SFT: optimizer-free forward + backward passes over the same batches of 4 bundled dialogues, padded into
  micro-batches of up to 3,400 tokens (the old preset: padding, hence an attention mask) against one dialogue per
  forward (the preset's ``micro_batch_tokens: 512``: no padding, so attention runs unmasked with the fused causal
  kernel);
- sampling: the first action of G episodes on each of 8 dialogues (the GRPO step's first wave: G identical prompts
  per dialogue) with each distinct prompt prefilled once and its cache shared by its G rows
  (:func:`agents.transformers_agent.shared_prompt_cache`) against ``generate`` prefilling every row, and the
  sampled tokens compared (the seeded sampler makes them equal unless the logits' last bits tip a draw);
- the GRPO update: forward + backward over G sequences per dialogue (each dialogue's first prompt + a random
  completion of 3-30 tokens) with each group's prompt encoded once per micro-batch and its keys and values
  expanded to the rows (:func:`train.sequences.forward_batches`) against padded micro-batches of separate rows;
- prompt rendering: chat template + tokenizer per action (the event loop's share of a rollout).

It prints seconds per variant and the ratios; ``--json`` adds one JSON line. Timings are noisy on a shared
machine: read the ratios, and rerun.

    .venv/bin/python benchmarks/perf/train_speed.py [--rounds 3] [--group 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.getcwd())

import torch  # noqa: E402

import agents.transformers_agent as transformers_agent  # noqa: E402
from agents.token_path import eos_token_id, pad_token_id, prompt_ids  # noqa: E402
from cm2_env.data import load_dialogues  # noqa: E402
from train.policy import forward_micro_batches, load_model, load_tokenizer  # noqa: E402
from train.sequences import TokenSequence, micro_batches  # noqa: E402
from train.sft import sft_sequences  # noqa: E402
from train.tiny_model import build_tiny  # noqa: E402


def sft_seconds(model, batches, micro_batch_tokens: int, pad_id: int) -> float:
    started = time.perf_counter()
    for batch in batches:
        for _, _, logprobs, _ in forward_micro_batches(model, batch, micro_batch_tokens, pad_id, bf16=False):
            (-logprobs.sum()).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def update_seconds(model, sequences, pad_id: int, shared: bool) -> float:
    import train.sequences

    original = train.sequences.forward_batches
    if not shared:  # every sequence its own row, padded micro-batches as before
        train.sequences.forward_batches = lambda seqs, budget: [
            (group, 0) for group in micro_batches([len(s) for s in seqs], budget)]
    try:
        started = time.perf_counter()
        for _, _, logprobs, _ in forward_micro_batches(model, sequences, 4096, pad_id, bf16=False):
            (-logprobs.sum()).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - started
    finally:
        train.sequences.forward_batches = original


def group_sequences(prompts: list[list[int]], vocab: int) -> list[TokenSequence]:
    generator = torch.Generator().manual_seed(0)
    sequences = []
    for prompt in prompts:
        n = int(torch.randint(3, 31, (1,), generator=generator))
        sequence = TokenSequence()
        sequence.extend(prompt, trainable=False)
        sequence.extend(torch.randint(5, vocab, (n,), generator=generator).tolist(), trainable=True,
                        logprobs=[-1.0] * n)
        sequences.append(sequence)
    return sequences


def first_prompts(tokenizer, dialogues, group: int) -> list[list[int]]:
    prompts = []
    for dialogue in dialogues:
        record = dialogue.to_record()
        messages = record["messages"]
        first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
        prompts += [prompt_ids(tokenizer, messages[: first_user + 1], record.get("tools"))] * group
    return prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--group", type=int, default=8, help="G: episodes per dialogue in the sampling wave")
    parser.add_argument("--sft-batches", type=int, default=8, help="SFT batches of 4 dialogues per round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(build_tiny(tmp, "tiny-cpu"))
        tokenizer, model = load_tokenizer(path), load_model(path, "cpu")
    dialogues = load_dialogues("tooltalk")
    pad, eos = pad_token_id(tokenizer), eos_token_id(tokenizer)

    sequences = sft_sequences(dialogues, tokenizer, 4096)
    batches = [sequences[i:i + 4] for i in range(0, 4 * args.sft_batches, 4)]
    prompts = first_prompts(tokenizer, dialogues[:8], args.group)
    seeds = list(range(len(prompts)))
    options = dict(max_new_tokens=48, temperature=1.0, top_p=1.0, eos_id=eos, pad_id=pad)
    shared = transformers_agent.shared_prompt_cache
    updates = group_sequences(prompts, len(tokenizer))
    times: dict[str, list[float]] = {"sft_padded": [], "sft_unpadded": [], "sample_shared": [], "sample_plain": [],
                                     "update_plain": [], "update_shared": []}
    same = 0
    model.train()
    sft_seconds(model, batches[:1], 512, pad)  # warm-up
    for _ in range(args.rounds):
        times["sft_padded"].append(sft_seconds(model, batches, 3400, pad))
        times["sft_unpadded"].append(sft_seconds(model, batches, 512, pad))
        started = time.perf_counter()
        with_cache = transformers_agent.generate_seeded(model, prompts, seeds, **options)
        times["sample_shared"].append(time.perf_counter() - started)
        transformers_agent.shared_prompt_cache = lambda *_: {}
        try:
            started = time.perf_counter()
            plain = transformers_agent.generate_seeded(model, prompts, seeds, **options)
            times["sample_plain"].append(time.perf_counter() - started)
        finally:
            transformers_agent.shared_prompt_cache = shared
        same = sum(a[0] == b[0] for a, b in zip(with_cache, plain))
        times["update_plain"].append(update_seconds(model, updates, pad, shared=False))
        times["update_shared"].append(update_seconds(model, updates, pad, shared=True))
    started = time.perf_counter()
    rendered = 0
    for dialogue in dialogues[:16]:
        record = dialogue.to_record()
        for end in range(1, len(record["messages"]) + 1):
            prompt_ids(tokenizer, record["messages"][:end], record.get("tools"))
            rendered += 1
    prompt_ms = (time.perf_counter() - started) * 1e3 / rendered

    median = {name: statistics.median(values) for name, values in times.items()}
    figures = {
        "sft_padded_s": round(median["sft_padded"], 3), "sft_unpadded_s": round(median["sft_unpadded"], 3),
        "sft_speedup": round(median["sft_padded"] / median["sft_unpadded"], 3),
        "sample_plain_s": round(median["sample_plain"], 3), "sample_shared_s": round(median["sample_shared"], 3),
        "sample_speedup": round(median["sample_plain"] / median["sample_shared"], 3),
        "update_plain_s": round(median["update_plain"], 3), "update_shared_s": round(median["update_shared"], 3),
        "update_speedup": round(median["update_plain"] / median["update_shared"], 3),
        "same_completions": same, "completions": len(prompts), "prompt_render_ms": round(prompt_ms, 2),
        "load_average": round(os.getloadavg()[0], 2),
    }
    print(f"SFT, {len(batches)} batches of 4 dialogues, forward + backward (median of {args.rounds}):")
    print(f"  padded micro-batches (<= 3400 tokens): {figures['sft_padded_s']:.2f} s")
    print(f"  one dialogue per forward, unmasked:     {figures['sft_unpadded_s']:.2f} s   "
          f"speed-up {figures['sft_speedup']:.2f}x")
    print(f"first action of {args.group} episodes x 8 dialogues ({len(prompts)} rows, <= 48 new tokens):")
    print(f"  generate, every row prefilled:          {figures['sample_plain_s']:.2f} s")
    print(f"  each distinct prompt prefilled once:    {figures['sample_shared_s']:.2f} s   "
          f"speed-up {figures['sample_speedup']:.2f}x   same completions {same}/{len(prompts)}")
    print(f"GRPO update, {len(updates)} sequences ({args.group} per dialogue), forward + backward:")
    print(f"  separate rows, padded micro-batches:    {figures['update_plain_s']:.2f} s")
    print(f"  each group's prompt encoded once:       {figures['update_shared_s']:.2f} s   "
          f"speed-up {figures['update_speedup']:.2f}x")
    print(f"prompt rendering (chat template + tokenizer): {prompt_ms:.1f} ms per action")
    print(f"load average {figures['load_average']}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
