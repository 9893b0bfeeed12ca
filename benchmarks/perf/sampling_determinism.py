"""How often does a seeded sample change when only the numerics change?

Seeded per-action sampling (agents.token_path) makes an action's random draws a function of its key, so the only
thing left that can change a sample is the logits themselves: a different batch shape, or a CPU with other
vector kernels, changes them in their last bits. This script samples the first action of every episode of a
rollout batch (G episodes per bundled dialogue, each with its own sampling seed) under several numerics and
counts how many actions and tokens differ from the reference run:

- ``batch 1``: every action generated alone (reference);
- ``batch 64``: all actions in batches of up to 64 (other padding widths and matrix shapes);
- ``kernels: ATEN_CPU_CAPABILITY=default`` and ``MKL_CBWR=COMPATIBLE``: batch 64 in a subprocess that uses
  other CPU kernels -- a stand-in for "another machine".

A token "flips" when it differs from the reference at the first position where the two actions diverge (later
tokens follow from different prefixes and are not counted as flips). The model is the SFT model of a tiny-cpu
run when ``--model`` names one, else a freshly built random tiny model (flatter distributions: more flips).

    .venv/bin/python -m benchmarks.perf.sampling_determinism [--model runs/tiny-cpu/sft] [--group 8] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VARIANTS = {
    "batch 64": {},
    "kernels: ATEN_CPU_CAPABILITY=default": {"ATEN_CPU_CAPABILITY": "default"},
    "kernels: MKL_CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
}


def sample(model_dir: str, batch_size: int, group: int, max_new_tokens: int, limit: int) -> list[list[int]]:
    """Completion ids of the first action of ``group`` episodes per dialogue, seeded as the rollout engine does."""
    from agents.token_path import sampling_seed
    from agents.transformers_agent import TransformersAgent
    from cm2_env.data import load_dialogues
    from cm2_env.env import CM2ToolUseEnv
    from train.policy import load_model, load_tokenizer

    dialogues = load_dialogues("tooltalk")[:limit]
    agent = TransformersAgent(load_model(model_dir), load_tokenizer(model_dir), max_new_tokens=max_new_tokens,
                              temperature=1.0, max_batch_size=batch_size)
    env = CM2ToolUseEnv(dataset=dialogues)
    requests = []
    for dialogue in dialogues:
        _, info = env.reset(options={"dialogue_id": dialogue.id})
        for g in range(group):
            requests.append((info["messages"], info["tools"], sampling_seed(0, dialogue.id, g, 0)))
    env.close()

    async def run():
        return await asyncio.gather(*(agent.act(m, t, context={"sampling_seed": s}) for m, t, s in requests))

    return [step.completion_ids for step in asyncio.run(run())]


def compare(reference: list[list[int]], other: list[list[int]]) -> dict[str, float]:
    actions_differ = sum(a != b for a, b in zip(reference, other))
    tokens = sum(len(a) for a in reference)
    return {"actions": len(reference), "actions_differ": actions_differ, "tokens": tokens,
            "action_flip_rate": actions_differ / len(reference), "token_flip_rate": actions_differ / max(1, tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a local HF model folder (default: a random tiny model)")
    parser.add_argument("--group", type=int, default=8, help="episodes per dialogue")
    parser.add_argument("--limit", type=int, default=78, help="dialogues")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: write samples to this file
    args = parser.parse_args()
    if args.child:
        Path(args.child).write_text(json.dumps(sample(args.model, 64, args.group, args.max_new_tokens, args.limit)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from train.tiny_model import build_tiny

            model = str(build_tiny(Path(tmp) / "model", preset="tiny-cpu"))
        reference = sample(model, 1, args.group, args.max_new_tokens, args.limit)
        results = {}
        for name, env in VARIANTS.items():
            out = Path(tmp) / "child.json"
            command = [sys.executable, "-m", "benchmarks.perf.sampling_determinism", "--model", model, "--group",
                       str(args.group), "--limit", str(args.limit), "--max-new-tokens", str(args.max_new_tokens),
                       "--child", str(out)]
            subprocess.run(command, env={**os.environ, **env}, cwd=REPO, check=True, capture_output=True)
            results[name] = compare(reference, json.loads(out.read_text()))
    print(f"model: {args.model or 'random tiny model'}; reference: batch 1, native kernels")
    print(f"{'variant':<40} {'actions':>8} {'differ':>7} {'action flips':>13} {'per token':>10}")
    for name, r in results.items():
        print(f"{name:<40} {r['actions']:>8} {r['actions_differ']:>7} {r['action_flip_rate']:>13.2%} "
              f"{r['token_flip_rate']:>10.3%}")
    if args.json:
        print(json.dumps({"model": args.model or "random", "variants": results}))


if __name__ == "__main__":
    main()
