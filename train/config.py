"""The configurations of cold-start SFT and GRPO, loadable from one YAML run file.

Contract: :class:`GRPOConfig` holds every knob of a GRPO run and :class:`SFTConfig` every knob of cold-start SFT,
each with a sensible default; both extend :class:`RunConfig`, the knobs they share (model, data, numerics,
bookkeeping). A run file is a YAML mapping: the shared and GRPO knobs at the top level, SFT's own under
``sft:`` (where a shared knob may be set again for SFT alone). :func:`load_config` returns the GRPO config of a
run file and :func:`load_sft_config` its SFT config; both check the whole file and raise one
:class:`ConfigError` whose message names the file, the line, the field and how to fix it.
:meth:`RunConfig.validate` checks ranges and choices for configs built in code.

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
from typing import Any, Callable

from cm2_env.env import INVALID_CALL_POLICIES
from cm2_env.errors import SpecError
from cm2_env.reward import ADVANTAGE_LEVELS, F_NORMS, L_MODES
from cm2_env.reward.items import choice_problem
from cm2_env.specs import choices, parse
from train.estimators import ESTIMATORS, LOSS_AGGREGATIONS

SCHEDULES = ("constant", "linear", "cosine")
BF16_MODES = ("auto", "true", "false")
OLD_LOGPROBS = ("auto", "sampler", "recompute")
ROLLOUT_ENGINES = ("transformers", "vllm")  # train/rollout_engine.py
DATA_PARALLEL = ("replicate", "fsdp2")  # train/distributed.py


class ConfigError(ValueError):
    """A configuration problem; the message says where (file:line, field) and how to fix it."""


def _raise(problems: list[str], source: str) -> None:
    """One ConfigError listing every problem, or nothing when there is none."""
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems in {source}:\n" + "\n".join(problems))


@dataclass
class RunConfig:
    """The knobs SFT and GRPO share (defaults follow the paper's recipe where it has one, docs/method.md)."""

    # --- model ---------------------------------------------------------------------------------------------
    model: str = ""  # local HF folder (config + weights); required
    tokenizer: str = ""  # local HF folder with a chat template; "" = the model folder
    chat_template: str = ""  # "" = the tokenizer's own | interleaved-thinking (keeps earlier <think>) | a .jinja file
    bf16: str = "auto"  # autocast bf16: auto = on CUDA devices that support it; true; false
    # --- data ------------------------------------------------------------------------------------------------
    dataset: str = "tooltalk"  # bundled name or path to a dialogues JSONL
    # --- optimizer basics ----------------------------------------------------------------------------------
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: float = 1.0
    # --- bookkeeping ---------------------------------------------------------------------------------------
    seed: int = 0
    num_threads: int = 0  # torch intra-op CPU threads (0 = torch's default); fix it to compare runs bitwise
    deterministic: bool = False  # torch.use_deterministic_algorithms (bitwise-repeatable kernels; slower on GPUs)
    output_dir: str = "runs/grpo"
    progress: bool = True

    def validate(self, source: str = "<config>", lines: dict[str, int] | None = None,
                 earlier: list[str] | None = None) -> Any:
        """Check choices and ranges; raise one :class:`ConfigError` listing every problem (with ``earlier`` ones,
        e.g. unknown fields), each naming ``source:line``, the field and the fix. Returns ``self``."""
        _raise(list(earlier or []) + self.problems(source, lines or {}), source)
        return self

    def problems(self, source: str, lines: dict[str, int], keys: dict[str, str] | None = None) -> list[str]:
        """Every problem of this config, one line each; ``keys`` maps a field to the key it was written as in
        the file (``sft.epochs`` for SFT's section), for ``lines`` and the message."""
        problems: list[str] = []

        def fail(name: str, problem: str, fix: str) -> None:
            key = (keys or {}).get(name, name)
            where = f"{source}:{lines[key]}" if key in lines else source
            problems.append(f"{where}: field {key!r}: {problem}. Fix: {fix}")

        self._check(fail)
        return problems

    def _check(self, fail: Callable[[str, str, str], None]) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            problem = choice_problem(getattr(self, name), allowed)
            if problem:
                fail(name, problem, f"set it to one of {', '.join(allowed)}")

        choice("bf16", BF16_MODES)
        if self.num_threads < 0:
            fail("num_threads", f"must be >= 0, got {self.num_threads}", "use 0 (default) or a positive integer")
        for name in ("weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                fail(name, f"must be >= 0, got {getattr(self, name)}", "use a non-negative number")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            fail("adam_betas", f"must be two numbers in [0, 1), got {self.adam_betas}", "use [0.9, 0.999]")
        try:
            from train.chat_templates import resolve_chat_template

            resolve_chat_template(self.chat_template)
        except ValueError as exc:
            fail("chat_template", str(exc).split(". Fix:")[0], "use '', 'interleaved-thinking' or a .jinja path")
        self._check_own(fail, choice)

    def _check_own(self, fail: Callable[[str, str, str], None], choice: Callable[[str, tuple[str, ...]], None]) -> None:
        """The subclass's own checks."""

    def require_model(self, source: str = "<config>") -> None:
        if not self.model:
            raise ConfigError(f"{source}: field 'model' is empty. Fix: set it to a local Hugging Face model folder "
                              "(config.json + weights + tokenizer), e.g. one built by `python -m train.tiny_model`")

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def updated(self, **changes: Any) -> Any:
        """A validated copy with ``changes`` applied (unknown names raise ConfigError)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown config field(s) {sorted(unknown)}")
        return replace(self, **changes).validate()


@dataclass
class SFTConfig(RunConfig):
    """Cold-start SFT (docs/training.md): the shared knobs plus SFT's own, the ``sft:`` section of a run file."""

    epochs: float = 2.0  # paper: 2
    learning_rate: float = 1e-6  # paper: 1e-6
    lr_schedule: str = "cosine"
    warmup_ratio: float = 0.1
    batch_size: int = 64  # dialogues per optimizer step (paper: 64)
    micro_batch_tokens: int = 8192
    max_length: int = 10240  # dialogues longer than this are cut (tokens)
    init_special_embeddings: bool = False  # docs/method.md: mean of related word embeddings
    output_dir: str = "runs/sft"  # in a run file: default <output_dir>/sft

    def _check_own(self, fail: Callable[[str, str, str], None], choice: Callable[[str, tuple[str, ...]], None]) -> None:
        choice("lr_schedule", SCHEDULES)
        for name in ("batch_size", "micro_batch_tokens", "max_length"):
            if getattr(self, name) < 1:
                fail(name, f"must be at least 1, got {getattr(self, name)}", "use a positive integer")
        if not 0 < self.learning_rate < 1:
            fail("learning_rate", f"must be in (0, 1), got {self.learning_rate}", "typical values are 1e-6 .. 1e-3")
        if not 0 <= self.warmup_ratio < 1:
            fail("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}", "use a fraction such as 0.1")
        if self.epochs <= 0:
            fail("epochs", f"must be > 0, got {self.epochs}", "use e.g. 2 (paper)")


@dataclass
class GRPOConfig(RunConfig):
    """GRPO with checklist rewards: the shared knobs plus the environment's, GRPO's and evaluation's."""

    # --- model -------------------------------------------------------------------------------------------
    lora: bool = False  # train LoRA adapters (peft) instead of all weights; the reference is the base model
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    gradient_checkpointing: bool = False

    # --- data and environment ----------------------------------------------------------------------------
    dialogue_ids: list[str] = field(default_factory=list)  # train only on these dialogues ([] = all)
    max_dialogues: int = 0  # after dialogue_ids: keep the first N (0 = all)
    simulator: str = "replay"  # a simulator spec (docs/architecture.md, "Spec strings")
    judge: str = "rule"  # a judge spec
    strict: bool = True  # end an episode after a turn whose required items are not all satisfied (the paper's)
    max_turns: int = 30  # reference turns played per episode (released: 30)
    max_actions: int = 30  # agent actions per episode (released: 30 generations per episode)
    max_actions_per_turn: int = 30  # agent actions per turn (cm2's guard; the released code has none)
    max_prompt_tokens: int = 10240  # context cap of a rollout prompt (paper: 10k); a longer prompt truncates it
    invalid_call_policy: str = "respond"

    # --- GRPO ----------------------------------------------------------------------------------------------
    steps: int = 100  # GRPO steps (rollout batches)
    group_size: int = 48  # G rollouts per dialogue (paper final: 48)
    prompts_per_step: int = 8  # dialogues per step; a step has group_size * prompts_per_step episodes
    estimator: str = "grpo"  # grpo | dr_grpo | rloo | reinforce_pp (train/estimators.py)
    advantage_level: str = "trajectory"  # trajectory | turn | step (Eq. 5 / 7 / 10)
    f_norm: str = "none"  # std | none, for estimator grpo (paper final: 1, i.e. none)
    normaliser: str = "reference"  # L of Eq. 4: reference turns (as released) | turns reached
    max_new_tokens: int = 1024  # per action
    temperature: float = 1.0
    top_p: float = 1.0
    rollout_concurrency: int = 0  # concurrent episodes (0 = all episodes of a step at once)
    max_batch_size: int = 64  # generation batch of the TransformersAgent
    learning_rate: float = 3e-6
    lr_schedule: str = "constant"  # constant | linear | cosine (after warmup)
    warmup_ratio: float = 0.0
    kl_coef: float = 0.001  # k3 KL loss against a frozen reference; 0 = no reference model
    loss_aggregation: str = "auto"  # auto | token-mean | seq-mean-token-mean | seq-mean-token-sum-norm
    clip_range: float = 0.2  # PPO clip epsilon (lower side)
    clip_range_high: float = 0.0  # upper side; 0 = same as clip_range
    entropy_coef: float = 0.0  # entropy bonus (0 = entropy is only logged)
    ppo_epochs: int = 1  # passes over each rollout batch
    ppo_mini_batches: int = 1  # optimizer steps per pass (the batch is split into this many mini-batches)
    micro_batch_tokens: int = 8192  # gradient accumulation: at most this many (padded) tokens per forward
    mask_truncated_completions: bool = False  # no loss on completions cut by max_new_tokens (DAPO overlong filter)
    skip_zero_advantage: bool = False  # drop episodes whose every advantage is 0 (saves compute; no KL on them)
    old_logprobs: str = "auto"  # sampler = the agent's sampling logprobs; recompute = a forward before update;
    # auto = recompute with rollout_engine vllm (other kernels than the trainer's), sampler otherwise

    data_parallel: str = "replicate"  # under torchrun: replicate (whole model per rank) | fsdp2 (sharded)

    # --- rollout engine (train/rollout_engine.py, docs/scaling.md) ------------------------------------------
    rollout_engine: str = "transformers"  # transformers (model.generate in the trainer) | vllm
    rollout_endpoint: str = ""  # vllm: "" = a colocated engine; vllm:URL[,URL...]#MODEL = vLLM servers
    weight_sync_dir: str = ""  # vllm servers: a folder they read new weights from ("" = OUTPUT_DIR/weight-sync)
    vllm_tensor_parallel_size: int = 1  # colocated engine: GPUs per engine
    vllm_gpu_memory_utilization: float = 0.5  # colocated engine: its share of GPU memory (weights + KV cache)
    vllm_sleep: bool = True  # colocated engine: free its GPU memory during updates (vLLM sleep mode; GPUs only)
    vllm_max_model_len: int = 0  # colocated engine: tokens per request (0 = max_prompt_tokens + max_new_tokens)
    vllm_dtype: str = "auto"  # colocated engine: vLLM dtype (auto = the checkpoint's; float32 on CPUs)
    vllm_enforce_eager: bool = False  # colocated engine: no CUDA graphs (faster start, slower decode)

    # --- evaluation ---------------------------------------------------------------------------------------
    eval_dialogues: int = 0  # measure the mean reward on the first N training dialogues (0 = skip)
    eval_samples: int = 1  # episodes per dialogue when measuring
    eval_temperature: float = 0.0  # 0 = greedy
    eval_max_turns: int = 0  # 0 = max_turns
    # held-out validation during training: these dialogues' mean reward (eval_samples, eval_temperature, seed
    # fixed per run) before the first step and every validation_interval steps, logged as validation/mean_reward
    validation_dialogues: list[str] = field(default_factory=list)  # dialogue ids ([] = no validation)
    validation_interval: int = 0  # GRPO steps between validations (0 = only before training and at the end)
    validation_judge: str = ""  # the judge of validation ("" = the training judge), e.g. a clean one beside noisy

    # --- bookkeeping ---------------------------------------------------------------------------------------
    checkpoint_interval: int = 50  # GRPO steps between checkpoints (0 = only at the end)
    rollout_log_interval: int = 10  # write every Nth step's episodes to rollouts.jsonl for cm2 view (0 = never)
    keep_checkpoints: int = 2
    resume: str = ""  # "" = start fresh; "auto" = latest checkpoint in output_dir; or a checkpoint folder
    tensorboard: bool = False

    def _check_own(self, fail: Callable[[str, str, str], None], choice: Callable[[str, tuple[str, ...]], None]) -> None:
        choice("estimator", tuple(ESTIMATORS))  # read at check time: a registered estimator is accepted
        choice("advantage_level", ADVANTAGE_LEVELS)
        choice("f_norm", F_NORMS)
        if self.f_norm == "std" and self.estimator in ESTIMATORS and not ESTIMATORS[self.estimator].std:
            fail("f_norm", f"estimator {self.estimator} never divides by a group's std",
                 "set f_norm: none, or estimator: grpo for GRPO's std normalisation")
        choice("normaliser", L_MODES)
        choice("lr_schedule", SCHEDULES)
        choice("old_logprobs", OLD_LOGPROBS)
        choice("rollout_engine", ROLLOUT_ENGINES)
        choice("data_parallel", DATA_PARALLEL)
        if self.data_parallel == "fsdp2" and self.lora:
            fail("data_parallel", "fsdp2 with LoRA is not supported", "use data_parallel: replicate with lora: true")
        if self.rollout_endpoint:
            if self.rollout_engine != "vllm":
                fail("rollout_endpoint", "is set but rollout_engine is not vllm", "set rollout_engine: vllm or "
                     "remove rollout_endpoint")
            try:
                if parse(self.rollout_endpoint, "policy").kind != "endpoint":
                    fail("rollout_endpoint", f"{self.rollout_endpoint!r} is not an endpoint spec",
                         "write vllm:http://HOST:PORT/v1#MODEL (several URLs separated by commas)")
            except SpecError as exc:
                fail("rollout_endpoint", str(exc).partition(". Fix: ")[0], "write vllm:http://HOST:PORT/v1#MODEL")
        if self.rollout_engine == "vllm" and self.lora:
            fail("lora", "LoRA training with rollout_engine vllm is not supported (the engine would need the "
                 "merged weights at every push)", "set lora: false or rollout_engine: transformers")
        if self.vllm_tensor_parallel_size < 1:
            fail("vllm_tensor_parallel_size", f"must be at least 1, got {self.vllm_tensor_parallel_size}",
                 "use 1, or the number of GPUs per engine")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            fail("vllm_gpu_memory_utilization", f"must be in (0, 1], got {self.vllm_gpu_memory_utilization}",
                 "use e.g. 0.5 when the engine shares the GPU with the trainer")
        if self.vllm_max_model_len < 0 or 0 < self.vllm_max_model_len <= self.max_new_tokens:
            fail("vllm_max_model_len", f"must be 0 or more than max_new_tokens ({self.max_new_tokens}), got "
                 f"{self.vllm_max_model_len}", "use 0 (max_prompt_tokens + max_new_tokens)")
        choice("loss_aggregation", ("auto", *LOSS_AGGREGATIONS))  # auto: the estimator's own
        choice("invalid_call_policy", INVALID_CALL_POLICIES)
        for name in ("steps", "group_size", "prompts_per_step", "max_new_tokens", "ppo_epochs", "ppo_mini_batches",
                     "micro_batch_tokens", "max_turns", "max_actions", "max_actions_per_turn", "max_prompt_tokens",
                     "max_batch_size", "eval_samples", "keep_checkpoints", "lora_r"):
            if getattr(self, name) < 1:
                fail(name, f"must be at least 1, got {getattr(self, name)}", "use a positive integer")
        for name in ("rollout_concurrency", "eval_dialogues", "eval_max_turns", "checkpoint_interval", "max_dialogues",
                     "rollout_log_interval", "validation_interval"):
            if getattr(self, name) < 0:
                fail(name, f"must be >= 0, got {getattr(self, name)}", "use 0 (default) or a positive integer")
        if not 0 < self.learning_rate < 1:
            fail("learning_rate", f"must be in (0, 1), got {self.learning_rate}", "typical values are 1e-6 .. 1e-3")
        for name in ("kl_coef", "entropy_coef", "clip_range_high", "eval_temperature", "lora_dropout"):
            if getattr(self, name) < 0:
                fail(name, f"must be >= 0, got {getattr(self, name)}", "use a non-negative number")
        if not 0 <= self.warmup_ratio < 1:
            fail("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}", "use a fraction such as 0.1")
        if not 0 < self.clip_range < 1:
            fail("clip_range", f"must be in (0, 1), got {self.clip_range}", "the paper's recipe uses 0.2")
        if self.temperature <= 0:
            fail("temperature", f"must be > 0 for GRPO sampling, got {self.temperature}", "use 1.0 (group diversity)")
        if not 0 < self.top_p <= 1:
            fail("top_p", f"must be in (0, 1], got {self.top_p}", "use 1.0")
        if self.group_size < 2:
            fail("group_size", f"GRPO needs at least 2 rollouts per dialogue, got {self.group_size}",
                 "use 8 or more (paper: 24 or 48)")
        if self.validation_interval and not self.validation_dialogues:
            fail("validation_interval", "is set but validation_dialogues is empty",
                 "name the held-out dialogues in validation_dialogues, or set validation_interval: 0")
        overlap = sorted(set(self.validation_dialogues) & set(self.dialogue_ids))
        if overlap:
            fail("validation_dialogues", f"{overlap[:3]} are training dialogues too (dialogue_ids)",
                 "validate on dialogues the run does not train on")
        for name, role in (("simulator", "simulator"), ("judge", "judge"), ("validation_judge", "judge")):
            if name == "validation_judge" and not self.validation_judge:
                continue
            try:
                parse(getattr(self, name), role)
            except SpecError as exc:
                problem, _, fix = str(exc).partition(". Fix: ")
                fail(name, problem, fix or f"use {choices(role)}")

    @property
    def recompute_old_logprobs(self) -> bool:
        """Whether the trainer recomputes the old policy's logprobs (``old_logprobs``, ``auto`` resolved)."""
        if self.old_logprobs == "auto":
            return self.rollout_engine == "vllm"
        return self.old_logprobs == "recompute"


#: The fields of each part of a run file: shared (top level), GRPO's (top level), SFT's own (``sft:``).
SHARED_FIELDS = tuple(f.name for f in fields(RunConfig))
GRPO_FIELDS = tuple(f.name for f in fields(GRPOConfig))
SFT_FIELDS = tuple(f.name for f in fields(SFTConfig))


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
    """1-based line of each top-level key of a YAML mapping, and of each key of its ``sft:`` section as
    ``sft.KEY`` (for error messages)."""
    import yaml

    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    lines: dict[str, int] = {}
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode):
            lines[key.value] = key.start_mark.line + 1
            if key.value == "sft" and isinstance(value, yaml.MappingNode):
                lines.update({f"sft.{k.value}": k.start_mark.line + 1 for k, _ in value.value
                              if isinstance(k, yaml.ScalarNode)})
    return lines


def _typed_values(cls: type, data: dict[str, Any], allowed: tuple[str, ...], prefix: str, source: str,
                  lines: dict[str, int], problems: list[str]) -> dict[str, Any]:
    """The entries of ``data`` that are fields of ``cls`` named in ``allowed``, read as their types; every other
    entry, or a value of the wrong type, adds a problem naming ``source:line``, the key and the fix."""
    known = {f.name: f for f in fields(cls)}
    hints = typing.get_type_hints(cls)  # resolves the postponed annotations
    values = {}
    for name, value in data.items():
        key = prefix + str(name)
        where = f"{source}:{lines[key]}" if key in lines else source
        if name not in allowed:
            if prefix == "" and str(name).startswith("sft_") and str(name)[4:] in SFT_FIELDS:
                problems.append(f"{where}: field {key!r} moved to the sft: section. Fix: write `{str(name)[4:]}: "
                                f"{json.dumps(value)}` under `sft:`")
                continue
            if prefix == "" and name in SFT_FIELDS:
                problems.append(f"{where}: field {key!r} is an SFT field. Fix: move it under `sft:`")
                continue
            if prefix == "sft." and name in GRPO_FIELDS:
                problems.append(f"{where}: field {key!r} is a GRPO field, not an SFT one. Fix: move it to the top "
                                "level")
                continue
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f"did you mean {prefix + close[0]!r}?" if close else "see docs/training.md for the list of fields"
            problems.append(f"{where}: unknown field {key!r}. Fix: remove it or rename it ({hint})")
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
            problems.append(f"{where}: field {key!r} must be of type {_type_name(hints[name])}, got "
                            f"{json.dumps(value)} ({type(value).__name__}). Fix: e.g. `{name}: {json.dumps(default)}`")
            continue
        values[name] = value
    return values


def configs_from_mapping(data: Any, source: str = "<config>", lines: dict[str, int] | None = None, *,
                         overrides: dict[str, Any] | None = None,
                         sft_overrides: dict[str, Any] | None = None) -> tuple[GRPOConfig, SFTConfig]:
    """The validated GRPO and SFT configs of a run mapping (module docstring); ``overrides`` (top level) and
    ``sft_overrides`` (SFT section) win over the mapping where they are not None. Raises one ConfigError
    listing every problem of both."""
    lines = lines or {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config is a mapping of field names to values, got {type(data).__name__}. "
                          "Fix: write `name: value` lines at the top level")
    data = dict(data)
    section = data.pop("sft", None)
    problems: list[str] = []
    if section is None:
        section = {}
    elif not isinstance(section, dict):
        where = f"{source}:{lines['sft']}" if "sft" in lines else source
        problems.append(f"{where}: field 'sft' must be a mapping of SFT fields, got {type(section).__name__}. Fix: "
                        "indent `epochs: 2` and the other SFT fields under `sft:`")
        section = {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    section = {**section, **{k: v for k, v in (sft_overrides or {}).items() if v is not None}}
    top = _typed_values(GRPOConfig, data, GRPO_FIELDS, "", source, lines, problems)
    own = _typed_values(SFTConfig, section, SFT_FIELDS, "sft.", source, lines, problems)
    grpo = GRPOConfig(**top)
    shared = {name: value for name, value in top.items() if name in SHARED_FIELDS}
    sft = SFTConfig(**{**shared, "output_dir": str(Path(grpo.output_dir) / "sft"), **own})
    problems += grpo.problems(source, lines)
    problems += [p for p in sft.problems(source, lines, {name: "sft." + name for name in own}) if p not in problems]
    _raise(problems, source)
    return grpo, sft


def _load(path: str | Path, overrides: dict[str, Any], sft_overrides: dict[str, Any]) -> tuple[GRPOConfig, SFTConfig]:
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
    return configs_from_mapping(data, str(path), _field_lines(text), overrides=overrides, sft_overrides=sft_overrides)


def load_config(path: str | Path, **overrides: Any) -> GRPOConfig:
    """The GRPO config of a YAML run file; ``overrides`` (e.g. from the command line) win over the file. The
    file's ``sft:`` section is checked too."""
    return _load(path, overrides, {})[0]


def load_sft_config(path: str | Path, **overrides: Any) -> SFTConfig:
    """The SFT config of a YAML run file: its shared top-level fields with its ``sft:`` section over them;
    ``overrides`` win over both. The GRPO part of the file is checked too."""
    return _load(path, {}, overrides)[1]
