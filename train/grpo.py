"""GRPO with checklist rewards (CM2, arXiv 2602.12268): the loop, in a file you can read top to bottom.

config -> rollout -> advantages -> loss -> update -> log, repeated ``config.steps`` times:

1. **config**: :class:`train.config.GRPOConfig` (YAML); the policy is a local transformers model.
2. **rollout**: for ``prompts_per_step`` dialogues, ``group_size`` episodes each run concurrently in
   CM2ToolUse-v0 (simulator + judge) with :class:`agents.TransformersAgent`, which batches generation across the
   episodes and records every action's prompt ids, completion ids and sampling logprobs.
3. **advantages**: :func:`cm2_env.reward.score_group` turns each group's reward records (what the environment
   computed and paid, checklists and verdicts included) into trajectory (Eq. 5), turn (Eq. 7) or step (Eq. 10)
   advantages; :func:`cm2_env.reward.advantages_per_action` lays them on
   the episode's actions. Failed episodes (simulator/judge errors) are excluded from the group and from the
   loss, and counted.
4. **loss**: every action's sampled ids become training tokens as they are (:mod:`train.sequences`, no
   re-tokenisation); only completion tokens carry loss: PPO-clip + ``kl_coef`` * k3 KL to the frozen reference,
   tokens weighted by ``loss_aggregation`` (:mod:`train.update`).
5. **update**: ``ppo_epochs`` passes over the batch, each split into ``ppo_mini_batches`` optimizer steps, each
   accumulated over micro-batches of at most ``micro_batch_tokens`` tokens, under bf16 autocast where enabled
   (:mod:`train.update`).
6. **log**: one JSONL record per step (:mod:`train.metrics`; ``on_step`` drives the CLI's progress bar) and a
   checkpoint every ``checkpoint_interval`` steps (:mod:`train.checkpoint`, exact resume). The reward-curve PNG
   is drawn from the metrics by :func:`train.metrics.plot_reward_curve` (the tiny-cpu preset does).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from agents.token_path import eos_token_id, pad_token_id
from train.config import GRPOConfig
from train.estimators import ESTIMATORS, loss_aggregation_for, whiten_actions
from train.distributed import FSDP2Policy, init_distributed
from train.rollout_engine import AgentFactory, rollout_factory, transformers_agent
from train.policy import (ReferencePolicy, add_lora, configure_torch, load_model, load_tokenizer, make_optimizer,
                          make_scheduler, model_device, use_bf16)
from train.sequences import TokenSequence, episode_sequences, epoch_order
from train.update import update_policy

# ---------------------------------------------------------------------------------------------------------
# 1. config: which dialogues a step uses (a seeded, epoch-wise shuffle; resumable from a position)
# ---------------------------------------------------------------------------------------------------------


def select_dialogues(dialogues: Sequence[Any], config: GRPOConfig) -> list[Any]:
    """The training dialogues: those named in ``dialogue_ids`` (in that order) or all, cut to ``max_dialogues``."""
    if config.dialogue_ids:
        by_id = {d.id: d for d in dialogues}
        missing = [i for i in config.dialogue_ids if i not in by_id]
        if missing:
            raise ValueError(f"dialogue_ids: {missing[:5]} not in dataset {config.dataset!r}. Fix: use ids from "
                             "`cm2 data stats` or leave dialogue_ids empty")
        dialogues = [by_id[i] for i in config.dialogue_ids]
    dialogues = [d for d in dialogues if d.checklist()]
    if config.max_dialogues:
        dialogues = dialogues[: config.max_dialogues]
    if not dialogues:
        raise ValueError(f"no dialogues with checklists to train on in {config.dataset!r}")
    return list(dialogues)


def select_validation(dialogues: Sequence[Any], config: GRPOConfig) -> list[Any]:
    """The held-out validation dialogues named by ``validation_dialogues`` (in that order)."""
    by_id = {d.id: d for d in dialogues}
    missing = [i for i in config.validation_dialogues if i not in by_id]
    if missing:
        raise ValueError(f"validation_dialogues: {missing[:5]} not in dataset {config.dataset!r}. Fix: use ids from "
                         "`cm2 data stats`")
    return [by_id[i] for i in config.validation_dialogues]


def validate(model: Any, tokenizer: Any, dialogues: Sequence[Any], config: GRPOConfig) -> dict[str, Any]:
    """``{"validation": {"mean_reward", "failed"}}``: the mean reward on the validation dialogues, judged by
    ``validation_judge`` (default: the training judge) and sampled with the run's seed (the same draws at every
    validation, so curves compare the policy, not the luck)."""
    from train.evaluate import measure_reward

    if config.validation_judge:
        config = config.updated(judge=config.validation_judge)
    measured = measure_reward(model, tokenizer, dialogues, config, seed=config.seed)
    return {"validation": {"mean_reward": measured["mean_reward"], "failed": measured["failed"]}}


def dialogues_at(position: int, count: int, n: int, seed: int) -> list[int]:
    """Indices of the ``count`` dialogues starting at ``position`` of the run's data order
    (:func:`train.sequences.epoch_order`); a pure function, so a resumed run continues the same order."""
    return [epoch_order(n, seed, k // n)[k % n] for k in range(position, position + count)]


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of a step: rollouts depend on (weights, step), not on the history of the RNG."""
    return (seed * 1_000_003 + step * 7_919) % (2**31 - 1)


# ---------------------------------------------------------------------------------------------------------
# 2. rollout
# ---------------------------------------------------------------------------------------------------------


def env_kwargs(config: GRPOConfig, max_turns: int | None = None) -> dict[str, Any]:
    return {
        "simulator": config.simulator,
        "judge": config.judge,
        # a noisy judge's errors depend on the run's seed: seeds see different error patterns
        **({"judge_options": {"noise_seed": config.seed}} if config.judge.strip().startswith("noisy:") else {}),
        "strict": config.strict,
        "normaliser": config.normaliser,
        "max_turns": max_turns or config.max_turns,
        "max_actions": config.max_actions,
        "max_actions_per_turn": config.max_actions_per_turn,
        "invalid_call_policy": config.invalid_call_policy,
    }


def collect_rollouts(model: Any, tokenizer: Any, dialogues: Sequence[Any], config: GRPOConfig, *, seed: int,
                     group_size: int, temperature: float, max_turns: int | None = None,
                     make_agent: AgentFactory = transformers_agent,
                     profile: dict[str, float] | None = None) -> list[Any]:
    """``group_size`` episodes per dialogue, all concurrent, with the agent ``make_agent`` builds
    (:mod:`train.rollout_engine`; generation batched across the episodes). A factory with a ``rollouts_done()``
    method is told when the collection ends (a colocated vLLM engine then frees its GPU memory). ``profile``
    receives the agent's seconds per activity (``prompt_s``, ``generate_s``) when it keeps them."""
    from agents.rollout import run_rollouts

    agent = make_agent(model, tokenizer, config, seed, temperature)
    concurrency = config.rollout_concurrency or len(dialogues) * group_size
    try:
        return run_rollouts(dialogues, agent, group_size=group_size, env_kwargs=env_kwargs(config, max_turns),
                            concurrency=concurrency, progress=False, seed=seed)
    finally:
        if profile is not None:
            profile.update({f"{name}_s": seconds for name, seconds in getattr(agent, "seconds", {}).items()})
        if hasattr(make_agent, "rollouts_done"):
            make_agent.rollouts_done()


# ---------------------------------------------------------------------------------------------------------
# 3. advantages
# ---------------------------------------------------------------------------------------------------------


def action_advantages(episodes: Sequence[Any], config: GRPOConfig) -> list[list[float] | None]:
    """Per episode, one advantage per action at ``config.advantage_level`` (None for a failed episode), by
    ``config.estimator`` (:mod:`train.estimators`).

    Episodes are grouped by dialogue id; each group's reward records -- what the environment computed and paid
    -- are scored with :func:`cm2_env.reward.score_group`. An estimator that whitens the batch then whitens all
    live actions' advantages together.
    """
    from cm2_env.reward import advantages_per_action, score_group

    entry = ESTIMATORS[config.estimator]

    def estimator(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
        return entry.group(values, groups, n_groups, config.f_norm)

    groups: dict[str, list[int]] = {}
    for i, episode in enumerate(episodes):
        groups.setdefault(episode.dialogue_id, []).append(i)
    out: list[list[float] | None] = [None] * len(episodes)
    for members in groups.values():
        records = []
        for i in members:
            record = episodes[i].reward_record or {}
            records.append({**record, "failed": episodes[i].failed or not record or bool(record.get("failed"))})
        scores = score_group(records, estimator=estimator)
        for record, score, i in zip(records, scores.rollouts, members):
            if score.failed:
                continue
            level = {"trajectory": score.adv_traj, "turn": score.adv_turn, "step": score.adv_step}[config.advantage_level]
            out[i] = advantages_per_action([int(turn["steps"]) for turn in record["turns"]], level,
                                           config.advantage_level)
    if entry.whiten_batch:
        whiten_actions(out, [[len(s.completion_ids) for s in episode.steps] for episode in episodes],
                       keep_zero=config.skip_zero_advantage)
    return out


def training_sequences(episodes: Sequence[Any], advantages: Sequence[list[float] | None],
                       skip_zero_advantage: bool, eos_id: int | None = None) -> list[TokenSequence]:
    """The sampled token ids of every live episode, with its per-action advantages on its completion tokens.

    With ``eos_id`` given, completions that did not end with it (cut by ``max_new_tokens``) carry no loss
    ("overlong filtering", as in DAPO): an unfinished action is neither reinforced nor penalised.
    """
    sequences = []
    for episode, per_action in zip(episodes, advantages):
        if per_action is None or not episode.steps:
            continue
        if skip_zero_advantage and not any(per_action):
            continue
        finished = None if eos_id is None else [bool(s.completion_ids) and s.completion_ids[-1] == eos_id
                                                for s in episode.steps]
        sequences.extend(episode_sequences(episode.steps, per_action, finished))
    return [s for s in sequences if s.n_loss_tokens > 0]


# ---------------------------------------------------------------------------------------------------------
# 6. log, and the loop that ties 1-5 together (4, loss, and 5, update, are in train.update)
# ---------------------------------------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None}
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std())}


def rollout_metrics(episodes: Sequence[Any], dialogues: Sequence[Any],
                    advantages: Sequence[list[float] | None]) -> dict[str, Any]:
    """Reward mean/std at each level, items passed by focus, failures, early ends, judge and simulator usage."""
    from agents.rollout import summarize

    live = [e for e in episodes if not e.failed]
    summary = summarize(episodes, dialogues)
    turn_rewards = [r for e in live for r in (e.reward_record or {}).get("turn_rewards", [])]
    action_rewards = [r for e in live for turn in (e.reward_record or {}).get("action_rewards", []) for r in turn]
    flat_advantages = [a for per_action in advantages if per_action for a in per_action]
    return {
        "reward": _mean_std([e.R for e in live]),
        "turn_reward": _mean_std(turn_rewards),
        "action_reward": _mean_std(action_rewards),
        "advantage": {**_mean_std(flat_advantages),
                      "nonzero": float(np.mean([a != 0 for a in flat_advantages])) if flat_advantages else 0.0},
        "episodes": len(episodes),
        "failed": summary["failed"],
        "ended_early": summary["ended_early"],
        "truncated": summary["truncated"],
        "actions_per_episode": float(np.mean([len(e.steps) for e in episodes])) if episodes else 0.0,
        "completion_tokens": _mean_std([len(s.completion_ids or []) for e in episodes for s in e.steps]),
        "items_passed": {k: v["rate"] for k, v in summary["items_passed_by_focus"].items()},
        "usage": summary["usage"],
    }


@dataclass
class GRPOResult:
    output_dir: Path
    steps_done: int
    records: list[dict[str, Any]]
    failed_episodes: int
    final_dir: Path | None
    seconds: float


def build_policy(config: GRPOConfig) -> tuple[Any, Any, ReferencePolicy | None]:
    """(policy, tokenizer, frozen reference or None when kl_coef == 0), on CUDA when available."""
    config.require_model()
    tokenizer = load_tokenizer(config.tokenizer_path, config.chat_template)
    policy = load_model(config.model, "cuda" if torch.cuda.is_available() else "cpu")
    if config.lora:
        policy = add_lora(policy, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
    if config.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference = ReferencePolicy(policy) if config.kl_coef > 0 else None
    policy.eval()
    return policy, tokenizer, reference


def _prepare_output(config: GRPOConfig, out: Path, overwrite: bool, dist: Any) -> None:
    """Refuse an ``output_dir`` that holds an earlier run unless the config resumes it or ``overwrite`` clears it;
    write the run's ``config.yaml`` (ending with what ``loss_aggregation: auto`` resolved to)."""
    from train.checkpoint import clear_run, previous_run
    from train.config import ConfigError

    earlier = previous_run(out)
    if earlier and not config.resume:
        if not overwrite:
            raise ConfigError(f"output_dir {out} already holds a run ({earlier}). Fix: --resume auto to continue "
                              "it, --overwrite to replace it, or another --out")
        dist.barrier()  # every rank has looked before rank 0 clears it
        if dist.main:
            clear_run(out)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        resolved = loss_aggregation_for(config.estimator, config.loss_aggregation)
        note = f"\n# loss_aggregation auto resolves to {resolved} (the {config.estimator} estimator's own)\n" \
            if config.loss_aggregation == "auto" else ""
        (out / "config.yaml").write_text(config.to_yaml() + note, encoding="utf-8")
    dist.barrier()


def train(config: GRPOConfig, *, dialogues: Sequence[Any] | None = None, max_steps: int | None = None,
          on_step: Callable[[int, dict[str, Any]], None] | None = None, save_final: bool = True,
          overwrite: bool = False, make_agent: AgentFactory | None = None) -> GRPOResult:
    """Run (or resume) GRPO as configured. ``max_steps`` stops early after that many steps of this call (the
    schedule still spans ``config.steps``: how an interrupted run is simulated). ``on_step(step, record)`` is
    called after every step. An ``output_dir`` that holds an earlier run is refused unless the config resumes
    it or ``overwrite`` replaces it (its metrics, checkpoints and final model are removed first).
    ``make_agent`` builds each step's rollout policy from the current weights (:data:`AgentFactory`; default:
    the one ``config.rollout_engine`` selects)."""
    from cm2_env.data import load_dialogues
    from train.checkpoint import TrainerState, load_checkpoint, resolve_resume, save_checkpoint
    from train.metrics import MetricsLogger, RolloutLog

    started = time.perf_counter()
    config.validate()
    dist = init_distributed()
    out = Path(config.output_dir)
    _prepare_output(config, out, overwrite, dist)
    configure_torch(config)
    all_dialogues = dialogues if dialogues is not None else load_dialogues(config.dataset)
    dialogues = select_dialogues(all_dialogues, config)
    policy, tokenizer, reference = build_policy(config)
    fsdp = (FSDP2Policy(policy, reference.frozen_copy if reference is not None else None, dist)
            if config.data_parallel == "fsdp2" and dist.world > 1 else None)
    pad_id = pad_token_id(tokenizer)
    bf16 = use_bf16(config.bf16, model_device(policy))
    optimizer = make_optimizer(policy, config.learning_rate, config.weight_decay, config.adam_betas)
    scheduler = make_scheduler(optimizer, config.steps * config.ppo_epochs * config.ppo_mini_batches,
                               config.warmup_ratio, config.lr_schedule)
    resume_from = resolve_resume(config.resume, out, warn=lambda message: print(message, file=sys.stderr))
    state = load_checkpoint(resume_from, policy, optimizer, scheduler) if resume_from else TrainerState()
    logger = (MetricsLogger(out, tensorboard=config.tensorboard, resume_step=state.step if resume_from else None)
              if dist.main else None)
    rollout_log = (RolloutLog(out, resume_step=state.step if resume_from else None)
                   if dist.main and config.rollout_log_interval else None)
    end = config.steps if max_steps is None else min(config.steps, state.step + max_steps)
    validation = select_validation(all_dialogues, config)
    if validation and state.step == 0:
        validation_record = validate(fsdp.full_model() if fsdp is not None else policy, tokenizer, validation,
                                     config)
        if logger is not None:
            logger.log(0, validation_record)
    records, failed_total = [], int(state.extras.get("failed_episodes", 0))
    make_agent = make_agent or rollout_factory(config)
    for step in range(state.step, end):
        t0 = time.perf_counter()
        # --- rollout
        batch = [dialogues[i] for i in dialogues_at(state.data_position, config.prompts_per_step, len(dialogues), config.seed)]
        seed = step_seed(config.seed, step)
        sampler = fsdp.full_model() if fsdp is not None else policy  # FSDP2: gather the shards for sampling
        profile: dict[str, float] = {}
        episodes = dist.gather(collect_rollouts(sampler, tokenizer, dist.shard(batch), config, seed=seed,
                                                group_size=config.group_size, temperature=config.temperature,
                                                make_agent=make_agent, profile=profile))
        t_rollout = time.perf_counter() - t0
        # --- advantages -> token sequences
        advantages = action_advantages(episodes, config)
        sequences = training_sequences(episodes, advantages, config.skip_zero_advantage,
                                       eos_token_id(tokenizer) if config.mask_truncated_completions else None)
        # --- loss inputs and update
        t1 = time.perf_counter()
        stats, mismatch = update_policy(policy, reference, optimizer, scheduler, sequences, config, pad_id, bf16,
                                        seed, dist, profile)
        t_update = time.perf_counter() - t1
        # --- log
        failed_total += sum(e.failed for e in episodes)
        generated = sum(len(s.completion_ids or []) for e in episodes for s in e.steps)
        record = {
            **rollout_metrics(episodes, batch, advantages),
            "loss": stats.first_loss, "policy_loss": stats.policy_loss, "kl": stats.kl, "entropy": stats.entropy,
            "clip_fraction": stats.clip_fraction, "ratio_max": stats.ratio_max, "ratio_min": stats.ratio_min,
            "grad_norm": stats.grad_norm,
            "lr": scheduler.get_last_lr()[0], "sequences": len(sequences), "loss_tokens": stats.tokens,
            "failed_total": failed_total, "logprob_mismatch": mismatch,
            **({"rollout_engine": make_agent.metrics()} if hasattr(make_agent, "metrics") else {}),
            "time": {"rollout_s": t_rollout, "update_s": t_update, "step_s": time.perf_counter() - t0, **profile},
            "tokens_per_s": {"rollout": generated / max(t_rollout, 1e-9),
                             "train": sum(len(s) for s in sequences) * config.ppo_epochs / max(t_update, 1e-9)},
        }
        state.step, state.data_position = step + 1, state.data_position + config.prompts_per_step
        if validation and (state.step == config.steps or config.validation_interval
                           and state.step % config.validation_interval == 0):
            record.update(validate(sampler if fsdp is None else fsdp.full_model(), tokenizer, validation, config))
        state.extras["failed_episodes"] = failed_total
        records.append(logger.log(step + 1, record) if logger is not None else record)
        if rollout_log is not None and state.step % config.rollout_log_interval == 0:
            rollout_log.write(state.step, episodes)
        if (config.checkpoint_interval and state.step % config.checkpoint_interval == 0
                or state.step == config.steps) and (dist.main or fsdp is not None):
            save_checkpoint(out, state, policy, optimizer, scheduler, config.to_dict(), keep=config.keep_checkpoints,
                            dist=dist if fsdp is not None else None)
        if on_step is not None:
            on_step(state.step, records[-1])
    if logger is not None:
        logger.close()
    final_dir = None
    if save_final and state.step == config.steps:
        final_dir = out / "final"
        final = fsdp.full_model() if fsdp is not None else policy
        if dist.main:
            final.save_pretrained(final_dir)
            tokenizer.save_pretrained(final_dir)
    dist.barrier()
    return GRPOResult(out, state.step, records, failed_total, final_dir, time.perf_counter() - started)
