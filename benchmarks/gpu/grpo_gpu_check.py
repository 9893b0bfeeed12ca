"""A few GRPO steps of a Qwen3-0.6B- (or 1.7B-) shaped random model on one GPU: prints tokens/s and peak memory.

Needs only torch + transformers (and this repository's ``train`` package, which imports nothing else at module
level); no download, no environment, no judge: prompts are random token ids, and each group's rewards are random
numbers, so this measures the harness's GPU cost (sampling with ``generate``, the logprob bookkeeping, the
reference forward for the KL term, the PPO-clip update under bf16 autocast with gradient checkpointing) and
nothing about learning. It uses the same functions the trainer does: :func:`train.sequences.episode_sequences`,
:func:`train.update.fill_logprobs` and :func:`train.update.ppo_update`.

Run: ``python benchmarks/gpu/grpo_gpu_check.py [--steps 3] [--prompts 8] [--group 8] [--prompt-len 1024]
[--new-tokens 256] [--micro-batch-tokens 16384] [--json]``. The last line is a JSON object with the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere inside the repository

import torch  # noqa: E402

from train.config import GRPOConfig  # noqa: E402
from train.update import fill_logprobs, ppo_update  # noqa: E402
from train.policy import ReferencePolicy, make_optimizer, make_scheduler  # noqa: E402
from train.sequences import episode_sequences  # noqa: E402

QWEN3_0_6B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                  rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
QWEN3_1_7B = dict(QWEN3_0_6B, hidden_size=2048, intermediate_size=6144)
SIZES = {"0.6b": QWEN3_0_6B, "1.7b": QWEN3_1_7B}
#: only for a CPU smoke test of this script (--smoke): same code path, a model small enough for a laptop
SMOKE = dict(QWEN3_0_6B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, head_dim=32)
EOS, PAD = 151645, 151643  # <|im_end|>, <|endoftext|> in Qwen3's vocabulary


def build_model(device: torch.device, shape: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("qwen3", eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None, **shape)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device)
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = PAD
    return model


def sample(model, prompts: torch.Tensor, new_tokens: int, temperature: float, bf16: bool):
    """(completion ids, sampling logprobs) per row: the sampler agents.TransformersAgent uses (seeded per row,
    logprobs on the device), with the end token banned until ``new_tokens`` so every row has the same length."""
    from agents.token_path import sampling_seed
    from agents.transformers_agent import generate_seeded

    rows = prompts.tolist()
    with torch.autocast(prompts.device.type, dtype=torch.bfloat16, enabled=bf16):
        results = generate_seeded(model, rows, [sampling_seed("gpu-check", i) for i in range(len(rows))],
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=temperature,
                                  top_p=1.0, eos_id=EOS, pad_id=PAD)
    return [ids for ids, _ in results], [logprobs for _, logprobs in results]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="0.6b", choices=sorted(SIZES), help="Qwen3 shape")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--group", type=int, default=8, help="G rollouts per prompt")
    parser.add_argument("--prompt-len", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--micro-batch-tokens", type=int, default=16384)
    parser.add_argument("--kl-coef", type=float, default=0.001)
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--smoke", action="store_true", help="a 2-layer model on the CPU: checks the script runs")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("no CUDA device: this script measures the GPU path (use --smoke to test it on a CPU)")
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    bf16 = cuda and torch.cuda.is_bf16_supported()
    config = GRPOConfig(model="<random>", steps=args.steps, group_size=args.group, prompts_per_step=args.prompts,
                         learning_rate=3e-6, kl_coef=args.kl_coef, micro_batch_tokens=args.micro_batch_tokens,
                         temperature=1.0, bf16="true" if bf16 else "false").validate()
    model = build_model(device, SMOKE if args.smoke else SIZES[args.size])
    if not args.no_gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference = ReferencePolicy(model) if args.kl_coef > 0 else None
    optimizer = make_optimizer(model, config.learning_rate, 0.0, (0.9, 0.999))
    scheduler = make_scheduler(optimizer, args.steps, 0.0, "constant")
    n_params = sum(p.numel() for p in model.parameters())
    log = (lambda *a: None) if args.json else print
    name = torch.cuda.get_device_name() if cuda else "cpu (smoke test)"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    log(f"device {name}  params {n_params / 1e6:.0f}M  bf16 {bf16}")
    rows = []
    generator = torch.Generator().manual_seed(0)
    for step in range(args.steps):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        prompts = torch.randint(1000, 100_000, (args.prompts, args.prompt_len), generator=generator)
        prompts = prompts.repeat_interleave(args.group, dim=0).to(device)
        sync()
        t0 = time.perf_counter()
        completions, logprobs = sample(model, prompts, args.new_tokens, config.temperature, bf16)
        sync()
        t_sample = time.perf_counter() - t0
        rewards = torch.rand(args.prompts, args.group, generator=generator)
        advantages = (rewards - rewards.mean(1, keepdim=True)).flatten().tolist()
        prompt_rows = prompts.cpu().tolist()
        sequences = [s for i in range(len(completions)) for s in episode_sequences(
            [SimpleNamespace(prompt_ids=prompt_rows[i], completion_ids=completions[i], logprobs=logprobs[i])],
            [advantages[i]])]
        t1 = time.perf_counter()
        if reference is not None:
            with reference.model() as ref_model:
                fill_logprobs(ref_model, sequences, "ref_logprobs", config, PAD, bf16)
        sync()
        t_ref = time.perf_counter() - t1
        t2 = time.perf_counter()
        stats = ppo_update(model, optimizer, scheduler, sequences, config, PAD, bf16, generator)
        sync()
        t_update = time.perf_counter() - t2
        tokens = sum(len(s) for s in sequences)
        row = {
            "step": step + 1,
            "sample_tokens_per_s": round(len(completions) * args.new_tokens / t_sample, 1),
            "train_tokens_per_s": round(tokens / t_update, 1),
            "reference_tokens_per_s": round(tokens / t_ref, 1) if reference is not None else None,
            "sample_s": round(t_sample, 2), "reference_s": round(t_ref, 2), "update_s": round(t_update, 2),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "loss": stats.first_loss, "kl": stats.kl, "clip_fraction": stats.clip_fraction,
            "ratio_max": stats.ratio_max,
        }
        rows.append(row)
        log(json.dumps(row))
    steady = rows[1:] or rows  # the first step includes CUDA/kernel warm-up
    summary = {
        "device": name, "params_m": round(n_params / 1e6, 1), "bf16": bf16,
        "episodes_per_step": args.prompts * args.group, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "gradient_checkpointing": not args.no_gradient_checkpointing,
        "sample_tokens_per_s": round(sum(r["sample_tokens_per_s"] for r in steady) / len(steady), 1),
        "train_tokens_per_s": round(sum(r["train_tokens_per_s"] for r in steady) / len(steady), 1),
        "peak_memory_gib": max(r["peak_memory_gib"] for r in rows) if cuda else None,
        "steps": rows,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
