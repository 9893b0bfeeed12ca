"""The vLLM rollout engine's acceptance checks, as one program (tests/test_vllm_engine.py runs it).

``python -m tests.support.vllm_engine_check --out DIR [--endpoint SPEC]``

1. ``DIR/sft``: a micro Qwen3 model (head_dim 64, which vLLM's CPU attention needs) given a short SFT on the
   first dialogues, so that sampled groups disagree and GRPO has a signal (built once, reused).
2. A short GRPO run with ``rollout_engine: vllm`` -- a colocated engine, or the vLLM servers of ``--endpoint``
   (started on ``DIR/sft`` with ``VLLM_SERVER_DEV_MODE=1``) -- recording the per-step logprob mismatch.
3. The mean reward of the SFT model and of the trained one, both sampled by the same engine with the same seeds.
4. After a weight push of the trained model, the engine's logprobs of a fixed sequence against the trainer's.

Writes ``DIR/<mode>.json`` and prints it. Needs vLLM in this Python only for the colocated mode.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

DIALOGUES = 2


def sft_model(out: Path) -> Path:
    from cm2_env.data import load_dialogues
    from tests.support.tiny_models import MICRO, micro_model_dir
    from train.config import SFTConfig
    from train.sft import run_sft

    folder = out / "sft"
    if (folder / "config.json").is_file():
        return folder
    shape = replace(MICRO, hidden_size=128, intermediate_size=256, head_dim=64)
    base = micro_model_dir(out / "base", seed=0, shape=shape)
    dialogues = [d for d in load_dialogues("tooltalk") if d.checklist()][:DIALOGUES]
    config = SFTConfig(model=str(base), output_dir=str(folder), epochs=40.0, learning_rate=3e-3, batch_size=2,
                       micro_batch_tokens=4096, max_length=2048, bf16="false", warmup_ratio=0.0, seed=0,
                       progress=False).validate()
    run_sft(config, dialogues=dialogues)
    return folder


def grpo_config(model: Path, out: Path, endpoint: str) -> Any:
    from train.config import GRPOConfig

    return GRPOConfig(model=str(model), output_dir=str(out), rollout_engine="vllm", rollout_endpoint=endpoint,
                      vllm_dtype="float32", vllm_enforce_eager=True, max_dialogues=DIALOGUES, max_turns=1,
                      max_actions_per_turn=2, normaliser="reached", max_new_tokens=40, steps=6, group_size=8,
                      prompts_per_step=DIALOGUES, learning_rate=1e-3, kl_coef=0.0,
                      loss_aggregation="seq-mean-token-mean", f_norm="std", mask_truncated_completions=True,
                      checkpoint_interval=0, bf16="false", num_threads=2, seed=0, progress=False).validate()


def trainer_logprobs(model: Any, prompt: list[int], completion: list[int]) -> list[float]:
    import torch

    from agents.token_path import token_logprobs

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1]
    return token_logprobs(logits, torch.tensor(completion), 1.0)[0].tolist()


def server_logprobs(client: Any, prompt: list[int], completion: list[int]) -> list[float]:
    import asyncio

    result = asyncio.run(client.complete(prompt + completion, max_tokens=1, temperature=1.0, prompt_logprobs=0))
    entries = result.raw["choices"][0]["prompt_logprobs"][len(prompt):]
    return [float(entry[str(token)]["logprob"]) for entry, token in zip(entries, completion)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--endpoint", default="")
    parser.add_argument("--sft-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    model_dir = sft_model(out)
    if args.sft_only:
        return
    import torch

    from cm2_env.data import load_dialogues
    from train.evaluate import measure_reward
    from train.grpo import select_dialogues, train
    from train.policy import load_model, load_tokenizer
    from train.rollout_engine import VLLMRollouts

    torch.set_num_threads(2)
    mode = "remote" if args.endpoint else "colocated"
    config = grpo_config(model_dir, out / f"grpo-{mode}", args.endpoint)
    dialogues = select_dialogues(load_dialogues("tooltalk"), config)
    engine = VLLMRollouts(config)
    tokenizer = load_tokenizer(str(model_dir))
    sft = load_model(str(model_dir))
    before = measure_reward(sft, tokenizer, dialogues, config, seed=7, samples=16, temperature=1.0,
                            make_agent=engine)["mean_reward"]
    result = train(config, dialogues=dialogues, overwrite=True, make_agent=engine)
    trained = load_model(str(result.final_dir))
    after = measure_reward(trained, tokenizer, dialogues, config, seed=7, samples=16, temperature=1.0,
                           make_agent=engine)["mean_reward"]
    # a fixed sequence: a prompt and a tool-call completion
    from agents.token_path import prompt_ids

    prompt = prompt_ids(tokenizer, [{"role": "user", "content": "Register me and check the weather."}], None)
    completion = tokenizer.encode(" <tool_call>\n{\"name\": \"x\"}\n</tool_call>", add_special_tokens=False)
    engine.push(trained)  # the final update's weights
    engine_new = (server_logprobs(engine.client, prompt, completion) if engine.remote
                  else engine.engine.sequence_logprobs(prompt, completion))
    trainer_new = trainer_logprobs(trained, prompt, completion)
    trainer_old = trainer_logprobs(sft, prompt, completion)
    means = [r["logprob_mismatch/mean"] for r in result.records if r.get("logprob_mismatch/mean") is not None]
    maxima = [r["logprob_mismatch/max"] for r in result.records if r.get("logprob_mismatch/max") is not None]
    report = {
        "mode": mode, "reward_before": before, "reward_after": after,
        "step_rewards": [r["reward/mean"] for r in result.records],
        "mismatch_steps": len(means), "mismatch_mean": max(means), "mismatch_max": max(maxima),
        "push_gap_max": max(abs(a - b) for a, b in zip(engine_new, trainer_new)),
        "update_change_max": max(abs(a - b) for a, b in zip(trainer_new, trainer_old)),
        "failed_episodes": result.failed_episodes, "pushes": engine.pushes,
        "last_push_s": round(engine.last_push_s, 3), "weight_version": engine.version,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / f"{mode}.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
