"""Build a tiny Qwen3-shaped model and a byte-level BPE tokenizer locally, with no download.

Used by the ``tiny-cpu`` training preset, by tests, and as the model a vLLM CPU server serves in integration
tests (docs/training.md, "The tiny CPU run"). The tokenizer is trained on the bundled dialogues, has
the ChatML special tokens (``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>``) and the Hermes/Qwen markup tokens
(``<tool_call>``, ``</tool_call>``, ``<tool_response>``, ``</tool_response>``, ``<think>``, ``</think>``) as added
non-special tokens, so ``skip_special_tokens=True`` keeps them. Its chat template renders OpenAI messages and
tools in the Hermes tool-calling format that :mod:`cm2_env.toolcalls` parses.

Command line: ``python -m train.tiny_model --out DIR [--preset tiny-cpu|vllm] [--seed N]``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from train.chat_templates import CHAT_TEMPLATE

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKUP_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]

@dataclass(frozen=True)
class TinyShape:
    """Qwen3 shape of a tiny model (head_dim 64: vLLM's CPU attention rejects smaller heads)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int = 64
    max_position_embeddings: int = 4096
    vocab_size: int = 4096
    # Tokenizer: let BPE merge across words and punctuation (tokens such as `", "arguments": {"`). On the
    # repetitive tool JSON of the corpus this cuts prompts ~3x and tool calls ~2x: what makes GRPO affordable on
    # a CPU (train/presets.py).
    merge_across_words: bool = False


PRESETS: dict[str, TinyShape] = {
    # ~4.5M parameters with an 8k cross-word vocabulary: fast enough for GRPO on 2 CPU cores.
    "tiny-cpu": TinyShape(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=8192, merge_across_words=True),
    # ~0.2M parameters: what tests train in seconds, and the Figure 3 study's --quick smoke test.
    "micro": TinyShape(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=32, max_position_embeddings=4096, vocab_size=2048),
    # What the vLLM CPU integration tests serve (docs/llm.md: vLLM's CPU attention needs head_dim 64).
    "vllm": TinyShape(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=2048),
}


def corpus_texts(dataset: str = "tooltalk") -> list[str]:
    """Training text for the tokenizer: every bundled dialogue rendered with the chat template's markup."""
    from cm2_env.data import load_dialogues

    texts = []
    for dialogue in load_dialogues(dataset):
        record = dialogue.to_record()
        texts.append(json.dumps(record["tools"], ensure_ascii=False))
        for message in record["messages"]:
            texts.append(message.get("content") or "")
            for call in message.get("tool_calls") or []:
                texts.append(f'<tool_call>\n{{"name": "{call["function"]["name"]}", "arguments": '
                             f'{call["function"]["arguments"]}}}\n</tool_call>')
    return texts


def build_tokenizer(texts: Iterable[str], vocab_size: int = 4096, merge_across_words: bool = False):
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a chat-capable ``PreTrainedTokenizerFast``.

    ``merge_across_words``: no GPT-2 word splitting before BPE, so merges may span words and punctuation (tokens
    at most 24 characters long).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not merge_across_words)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(MARKUP_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        max_token_length=24 if merge_across_words else None,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.add_tokens(MARKUP_TOKENS, special_tokens=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, shape: TinyShape, seed: int = 0):
    """A randomly initialised Qwen3 causal LM with ``shape`` and the tokenizer's vocabulary."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "qwen3",
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def build_tiny(out: str | Path, preset: str = "tiny-cpu", seed: int = 0, dataset: str = "tooltalk") -> Path:
    """Build and save tokenizer + model under ``out`` (a local HF folder loadable with ``from_pretrained``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown tiny-model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    shape = PRESETS[preset]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus_texts(dataset), vocab_size=shape.vocab_size,
                                merge_across_words=shape.merge_across_words)
    model = build_model(tokenizer, shape, seed=seed)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out, safe_serialization=True)
    (out / "cm2_tiny.json").write_text(json.dumps({"preset": preset, "seed": seed, **asdict(shape)}, indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--preset", default="tiny-cpu", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny(args.out, args.preset, args.seed)
    print(f"built {args.preset} model and tokenizer in {path}")


if __name__ == "__main__":
    main()
