"""One training configuration for cold-start SFT and GRPO, loadable from YAML.

Contract: :class:`TrainConfig` holds every knob of a run with a sensible default; :func:`load_config` reads a
YAML mapping of field names to values and returns a validated config or raises :class:`ConfigError`, whose
message names the file, the line, the field and how to fix it. :meth:`TrainConfig.validate` checks ranges and
choices for configs built in code. Fields prefixed ``sft_`` drive ``cm2 sft``; the others drive ``cm2 train``.

Units: ``learning_rate`` per optimizer step; ``warmup_ratio`` of the total optimizer steps; token budgets in
tokens; ``checkpoint_interval`` in GRPO steps (one step = one batch of rollouts and its PPO epochs).
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cm2_env.env import INVALID_CALL_POLICIES
from cm2_env.errors import SpecError
from cm2_env.reward import ADVANTAGE_LEVELS, F_NORMS, L_MODES
from cm2_env.specs import choices, parse

SCHEDULES = ("constant", "linear", "cosine")
BF16_MODES = ("auto", "true", "false")
OLD_LOGPROBS = ("sampler", "recompute")
LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")  # train.losses


class ConfigError(ValueError):
    """A configuration problem; the message says where (file:line, field) and how to fix it."""


@dataclass
class TrainConfig:
    """Every hyper-parameter of a run (defaults follow the paper's RL recipe where it has one, docs/method.md)."""

    # --- model -------------------------------------------------------------------------------------------
    model: str = ""  # local HF folder (config + weights); required
    tokenizer: str = ""  # local HF folder with a chat template; "" = the model folder
    chat_template: str = ""  # "" = the tokenizer's own | interleaved-thinking (keeps earlier <think>) | a .jinja file
    lora: bool = False  # train LoRA adapters (peft) instead of all weights; the reference is the base model
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    gradient_checkpointing: bool = False
    bf16: str = "auto"  # autocast bf16: auto = on CUDA devices that support it; true; false

    # --- data and environment ----------------------------------------------------------------------------
    dataset: str = "tooltalk"  # bundled name or path to a dialogues JSONL
    dialogue_ids: list[str] = field(default_factory=list)  # train only on these dialogues ([] = all)
    max_dialogues: int = 0  # after dialogue_ids: keep the first N (0 = all)
    simulator: str = "replay"
    judge: str = "rule"
    max_turns: int = 30  # reference turns played per episode (released: 30)
    max_actions: int = 30  # agent actions per episode (released: 30 generations per episode)
    max_actions_per_turn: int = 30  # agent actions per turn (cm2's guard; the released code has none)
    max_prompt_tokens: int = 10240  # context cap of a rollout prompt (paper: 10k); a longer prompt truncates it
    invalid_call_policy: str = "respond"

    # --- GRPO ----------------------------------------------------------------------------------------------
    steps: int = 100  # GRPO steps (rollout batches)
    group_size: int = 48  # G rollouts per dialogue (paper final: 48)
    prompts_per_step: int = 8  # dialogues per step; a step has group_size * prompts_per_step episodes
    advantage_level: str = "trajectory"  # trajectory | turn | step (Eq. 5 / 7 / 10)
    f_norm: str = "none"  # std | none (paper final: 1, i.e. none)
    normaliser: str = "reference"  # L of Eq. 4: reference turns (as released) | turns reached
    max_new_tokens: int = 1024  # per action
    temperature: float = 1.0
    top_p: float = 1.0
    rollout_concurrency: int = 0  # concurrent episodes (0 = all episodes of a step at once)
    max_batch_size: int = 64  # generation batch of the TransformersAgent
    learning_rate: float = 3e-6
    lr_schedule: str = "constant"  # constant | linear | cosine (after warmup)
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: float = 1.0
    kl_coef: float = 0.001  # k3 KL loss against a frozen reference; 0 = no reference model
    loss_aggregation: str = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm (losses.py)
    clip_range: float = 0.2  # PPO clip epsilon (lower side)
    clip_range_high: float = 0.0  # upper side; 0 = same as clip_range
    entropy_coef: float = 0.0  # entropy bonus (0 = entropy is only logged)
    ppo_epochs: int = 1  # passes over each rollout batch
    ppo_mini_batches: int = 1  # optimizer steps per pass (the batch is split into this many mini-batches)
    micro_batch_tokens: int = 8192  # gradient accumulation: at most this many (padded) tokens per forward
    mask_truncated_completions: bool = False  # no loss on completions cut by max_new_tokens (DAPO overlong filter)
    skip_zero_advantage: bool = False  # drop episodes whose every advantage is 0 (saves compute; no KL on them)
    old_logprobs: str = "sampler"  # sampler = the agent's sampling logprobs; recompute = a forward before update

    # --- evaluation ---------------------------------------------------------------------------------------
    eval_dialogues: int = 0  # measure the mean reward on the first N training dialogues (0 = skip)
    eval_samples: int = 1  # episodes per dialogue when measuring
    eval_temperature: float = 0.0  # 0 = greedy
    eval_max_turns: int = 0  # 0 = max_turns

    # --- cold-start SFT -----------------------------------------------------------------------------------
    sft_dataset: str = ""  # "" = dataset
    sft_epochs: float = 2.0  # paper: 2
    sft_learning_rate: float = 1e-6  # paper: 1e-6
    sft_lr_schedule: str = "cosine"
    sft_warmup_ratio: float = 0.1
    sft_batch_size: int = 64  # dialogues per optimizer step (paper: 64)
    sft_micro_batch_tokens: int = 8192
    sft_max_length: int = 10240  # dialogues longer than this are cut (tokens)
    sft_init_special_embeddings: bool = False  # docs/method.md: mean of related word embeddings
    sft_output_dir: str = ""  # "" = <output_dir>/sft

    # --- bookkeeping ---------------------------------------------------------------------------------------
    seed: int = 0
    num_threads: int = 0  # torch intra-op CPU threads (0 = torch's default); fix it to compare runs bitwise
    deterministic: bool = False  # torch.use_deterministic_algorithms (bitwise-repeatable kernels; slower on GPUs)
    output_dir: str = "runs/grpo"
    checkpoint_interval: int = 50  # GRPO steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2
    resume: str = ""  # "" = start fresh; "auto" = latest checkpoint in output_dir; or a checkpoint folder
    tensorboard: bool = False
    progress: bool = True

    def validate(self, source: str = "<config>", lines: dict[str, int] | None = None,
                 earlier: list[str] | None = None) -> "TrainConfig":
        """Check choices and ranges; raise one :class:`ConfigError` listing every problem (with ``earlier`` ones,
        e.g. unknown fields), each naming ``source:line``, the field and the fix."""
        lines = lines or {}
        problems = list(earlier or [])

        def fail(name: str, problem: str, fix: str) -> None:
            where = f"{source}:{lines[name]}" if name in lines else source
            problems.append(f"{where}: field {name!r}: {problem}. Fix: {fix}")

        def choice(name: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                fail(name, f"{value!r} is not one of {', '.join(allowed)}", f"set it to one of {', '.join(allowed)}")

        choice("advantage_level", ADVANTAGE_LEVELS)
        choice("f_norm", F_NORMS)
        choice("normaliser", L_MODES)
        choice("lr_schedule", SCHEDULES)
        choice("sft_lr_schedule", SCHEDULES)
        choice("bf16", BF16_MODES)
        choice("old_logprobs", OLD_LOGPROBS)
        choice("loss_aggregation", LOSS_AGGREGATIONS)
        choice("invalid_call_policy", INVALID_CALL_POLICIES)
        for name in ("steps", "group_size", "prompts_per_step", "max_new_tokens", "ppo_epochs", "ppo_mini_batches",
                     "micro_batch_tokens", "max_turns", "max_actions", "max_actions_per_turn", "max_prompt_tokens",
                     "max_batch_size", "eval_samples",
                     "sft_batch_size", "sft_micro_batch_tokens", "sft_max_length", "keep_checkpoints", "lora_r"):
            if getattr(self, name) < 1:
                fail(name, f"must be at least 1, got {getattr(self, name)}", "use a positive integer")
        for name in ("rollout_concurrency", "eval_dialogues", "eval_max_turns", "checkpoint_interval", "max_dialogues",
                     "num_threads"):
            if getattr(self, name) < 0:
                fail(name, f"must be >= 0, got {getattr(self, name)}", "use 0 (default) or a positive integer")
        for name in ("learning_rate", "sft_learning_rate"):
            if not 0 < getattr(self, name) < 1:
                fail(name, f"must be in (0, 1), got {getattr(self, name)}", "typical values are 1e-6 .. 1e-3")
        for name in ("kl_coef", "entropy_coef", "weight_decay", "clip_range_high", "max_grad_norm", "eval_temperature",
                     "lora_dropout", "sft_epochs"):
            if getattr(self, name) < 0:
                fail(name, f"must be >= 0, got {getattr(self, name)}", "use a non-negative number")
        for name in ("warmup_ratio", "sft_warmup_ratio"):
            if not 0 <= getattr(self, name) < 1:
                fail(name, f"must be in [0, 1), got {getattr(self, name)}", "use a fraction such as 0.1")
        if not 0 < self.clip_range < 1:
            fail("clip_range", f"must be in (0, 1), got {self.clip_range}", "the paper's recipe uses 0.2")
        if self.temperature <= 0:
            fail("temperature", f"must be > 0 for GRPO sampling, got {self.temperature}", "use 1.0 (group diversity)")
        if not 0 < self.top_p <= 1:
            fail("top_p", f"must be in (0, 1], got {self.top_p}", "use 1.0")
        if self.group_size < 2:
            fail("group_size", f"GRPO needs at least 2 rollouts per dialogue, got {self.group_size}",
                 "use 8 or more (paper: 24 or 48)")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            fail("adam_betas", f"must be two numbers in [0, 1), got {self.adam_betas}", "use [0.9, 0.999]")
        if self.sft_epochs <= 0:
            fail("sft_epochs", "must be > 0", "use e.g. 2 (paper)")
        for name in ("simulator", "judge"):
            try:
                parse(getattr(self, name), name)
            except SpecError as exc:
                problem, _, fix = str(exc).partition(". Fix: ")
                fail(name, problem, fix or f"use {choices(name)}")
        try:
            from train.chat_templates import resolve_chat_template

            resolve_chat_template(self.chat_template)
        except ValueError as exc:
            fail("chat_template", str(exc).split(". Fix:")[0], "use '', 'interleaved-thinking' or a .jinja path")
        if len(problems) == 1:
            raise ConfigError(problems[0])
        if problems:
            raise ConfigError(f"{len(problems)} problems in {source}:\n" + "\n".join(problems))
        return self

    def require_model(self, source: str = "<config>") -> None:
        if not self.model:
            raise ConfigError(f"{source}: field 'model' is empty. Fix: set it to a local Hugging Face model folder "
                              "(config.json + weights + tokenizer), e.g. one built by `python -m train.tiny_model`")

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.model

    @property
    def sft_dir(self) -> Path:
        return Path(self.sft_output_dir or Path(self.output_dir) / "sft")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def updated(self, **changes: Any) -> "TrainConfig":
        """A validated copy with ``changes`` applied (unknown names raise ConfigError)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown config field(s) {sorted(unknown)}")
        return replace(self, **changes).validate()


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def _type_ok(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a field annotation (ints are accepted where floats are expected)."""
    origin = typing.get_origin(annotation)
    if origin in (list, typing.List):
        (inner,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True


def _yaml11_float(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) if typing.get_origin(annotation) is None else str(annotation)


def _field_lines(text: str) -> dict[str, int]:
    """1-based line of each top-level key of a YAML mapping (for error messages)."""
    import yaml

    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {key.value: key.start_mark.line + 1 for key, _ in node.value if isinstance(key, yaml.ScalarNode)}


def config_from_mapping(data: Any, source: str = "<config>", lines: dict[str, int] | None = None) -> TrainConfig:
    """Build a validated config from a mapping of field names to values."""
    lines = lines or {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config is a mapping of field names to values, got {type(data).__name__}. "
                          "Fix: write `name: value` lines at the top level")
    known = {f.name: f for f in fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)  # resolves the postponed annotations
    values = {}
    problems: list[str] = []
    for name, value in data.items():
        where = f"{source}:{lines[name]}" if name in lines else source
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see docs/training.md for the list of fields"
            problems.append(f"{where}: unknown field {name!r}. Fix: remove it or rename it ({hint})")
            continue
        f = known[name]
        # YAML reads `bf16: true` as a bool; the field is a three-way choice
        if name == "bf16" and isinstance(value, bool):
            value = "true" if value else "false"
        if hints[name] is float and isinstance(value, str):
            value = _yaml11_float(value)  # PyYAML reads `1e-4` (no dot) as a string
        if isinstance(value, float) and hints[name] is int and value.is_integer():
            value = int(value)
        if not _type_ok(value, hints[name]):
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            problems.append(f"{where}: field {name!r} must be of type {_type_name(hints[name])}, got "
                            f"{json.dumps(value)} ({type(value).__name__}). Fix: e.g. `{name}: {json.dumps(default)}`")
            continue
        values[name] = value
    return TrainConfig(**values).validate(source, lines, earlier=problems)


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a YAML config file; ``overrides`` (e.g. from the command line) win over the file."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file. Fix: pass an existing YAML file (examples in configs/)")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)}). Fix: check indentation "
                          "and quoting on that line") from None
    data = dict(data or {}) if isinstance(data, dict) or data is None else data
    if isinstance(data, dict):
        data.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_mapping(data, str(path), _field_lines(text))

