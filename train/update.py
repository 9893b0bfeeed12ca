"""The policy update of GRPO (:mod:`train.grpo` runs the loop): the objective per token and the optimizer steps.

- **loss**: every action's sampled ids are training tokens as they are (:mod:`train.sequences`); only completion
  tokens carry loss: PPO-clip + ``kl_coef`` * k3 KL to the frozen reference, tokens weighted by
  ``loss_aggregation`` (:data:`train.estimators.LOSS_AGGREGATIONS`). :func:`fill_logprobs` runs the forward
  passes the loss needs besides the policy's own (reference logprobs, optionally recomputed old logprobs).
- **update**: ``ppo_epochs`` passes over the batch, each split into ``ppo_mini_batches`` optimizer steps, each
  accumulated over micro-batches of at most ``micro_batch_tokens`` tokens, under bf16 autocast where enabled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from train.config import GRPOConfig
from train.distributed import Distributed, is_sharded
from train.estimators import LOSS_AGGREGATIONS, loss_aggregation_for
from train.policy import forward_micro_batches, model_device
from train.sequences import TokenSequence

# ---------------------------------------------------------------------------------------------------------
# loss: the objective per token, and the inputs that need a forward pass (reference logprobs for the KL
# and, optionally, recomputed old logprobs)
# ---------------------------------------------------------------------------------------------------------
# The GRPO objective per token: PPO-clip policy loss, k3 KL to a frozen reference, entropy, clip fraction.
#
# All functions take per-token tensors of one shape (``[batch, positions]``) and a boolean ``mask`` that is True
# exactly on policy-generated tokens (prompts, user messages and tool responses carry no loss). A mini-batch's
# loss is a weighted sum over its loss tokens, the weights summing to 1 over the mini-batch
# (:func:`sequence_token_weights`), so accumulating the gradients of its micro-batches gives exactly the gradient
# of the whole mini-batch. The weights say how tokens are aggregated: ``loss_aggregation`` names one of
# :data:`train.estimators.LOSS_AGGREGATIONS` (``auto``: the estimator's own; see that module for the formulas).


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """The k3 estimator of KL(pi || pi_ref) per token: exp(r) - r - 1 with r = log pi_ref - log pi (>= 0).

    Unbiased for KL(pi||pi_ref) when tokens are sampled from pi, always non-negative, low variance (Schulman's
    "Approximating KL divergence"; verl's ``low_var_kl``). ``r`` is clamped to [-20, 20] as verl does, so a token
    the reference finds impossible cannot produce an infinite loss.
    """
    log_ratio = (ref_logprobs - logprobs).clamp(-20.0, 20.0)
    return torch.exp(log_ratio) - log_ratio - 1.0


def ppo_clip_terms(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss ``-min(rho A, clip(rho, 1-eps_low, 1+eps_high) A)`` and whether clipping was active.

    ``rho = exp(logprobs - old_logprobs)``. "Clipping active" means the clipped term was the smaller one, i.e.
    the token gives no gradient (verl's ``pg_clipfrac``).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


@dataclass
class LossSums:
    """Sums over the loss tokens of one micro-batch, each already divided by the mini-batch's token count.

    Adding the fields of all micro-batches of a mini-batch gives its token means.
    """

    loss: torch.Tensor  # what to backpropagate
    policy_loss: float
    kl: float
    entropy: float
    clip_fraction: float
    ratio_max: float
    ratio_min: float
    tokens: int


def sequence_token_weights(loss_tokens: list[int], aggregation: str, length_norm: int = 1) -> list[float]:
    """The weight of each loss token of each sequence of a mini-batch (``loss_tokens[s]`` loss tokens in sequence
    s), for ``aggregation`` (:data:`train.estimators.LOSS_AGGREGATIONS`); ``length_norm`` is Dr. GRPO's constant
    L. The weights of all loss tokens sum to 1 (token-mean, seq-mean-token-mean) or to (total tokens)/(S L)
    (seq-mean-token-sum-norm)."""
    if aggregation not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}")
    if sum(loss_tokens) <= 0:
        raise ValueError("a mini-batch without policy tokens has no loss")
    return LOSS_AGGREGATIONS[aggregation](loss_tokens, length_norm)


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | int,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> LossSums:
    """GRPO loss of one micro-batch: PPO-clip + kl_coef * k3 KL - entropy_coef * entropy, each a weighted sum of
    its per-token values over the loss tokens (``mask``).

    ``weights``: per-token weights (:func:`sequence_token_weights`, laid out like ``logprobs``), or an int N for
    the token mean of a mini-batch of N loss tokens. The KL term needs ``ref_logprobs`` when ``kl_coef > 0``;
    with ``kl_coef == 0`` no reference is needed and the KL is reported only if given.
    """
    if isinstance(weights, int):
        if weights <= 0:
            raise ValueError("n_tokens must be positive: a mini-batch without policy tokens has no loss")
        weights = torch.full_like(logprobs, 1.0 / weights)
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs from the frozen reference model")
    maskf = mask.to(logprobs.dtype) * weights.to(logprobs.dtype)
    per_token, clipped = ppo_clip_terms(logprobs, old_logprobs, advantages, clip_low, clip_high)
    policy_sum = (per_token * maskf).sum()
    loss = policy_sum
    kl_value = 0.0
    if ref_logprobs is not None:
        kl_sum = (k3_kl(logprobs, ref_logprobs) * maskf).sum()
        kl_value = float(kl_sum.detach())
        if kl_coef > 0:
            loss = loss + kl_coef * kl_sum
    entropy_value = 0.0
    if entropy is not None:
        entropy_sum = (entropy * maskf).sum()
        entropy_value = float(entropy_sum.detach())
        if entropy_coef > 0:
            loss = loss - entropy_coef * entropy_sum
    with torch.no_grad():
        ratio = torch.exp(logprobs - old_logprobs)
        ratio_max = float(ratio[mask].max()) if bool(mask.any()) else 1.0
        ratio_min = float(ratio[mask].min()) if bool(mask.any()) else 1.0
    return LossSums(
        loss=loss,
        policy_loss=float(policy_sum.detach()),
        kl=kl_value,
        entropy=entropy_value,
        clip_fraction=float((clipped.to(maskf.dtype) * maskf).sum()),
        ratio_max=ratio_max,
        ratio_min=ratio_min,
        tokens=int(mask.sum()),
    )


@torch.no_grad()
def fill_logprobs(model: Any, sequences: Sequence[TokenSequence], attribute: str, config: GRPOConfig,
                  pad_id: int, bf16: bool, dist: Distributed = Distributed()) -> None:
    """Set ``sequence.<attribute>`` (a list aligned with input_ids) to ``model``'s logprobs on loss tokens. Under
    data parallelism each rank runs its share of the micro-batches and every rank receives every result."""
    filled = []
    for indices, _, logprobs, _ in forward_micro_batches(model, sequences, config.micro_batch_tokens, pad_id, bf16,
                                                         config.temperature, mine=dist.owns,
                                                         balanced_to=_balanced(model, sequences, config, dist)):
        values = iter(logprobs.float().cpu().tolist())
        for i in indices:
            # collate shifts by one: loss token j of the sequence is predicted at position j - 1
            filled.append((i, [next(values) if m and j > 0 else 0.0 for j, m in enumerate(sequences[i].loss_mask)]))
    for i, values in dist.gather(filled):
        setattr(sequences[i], attribute, values)


def logprob_gap(sequences: Sequence[TokenSequence], sampled: Sequence[list[float]]) -> dict[str, float] | None:
    """Mean and max |sampler logprob - trainer logprob| over the loss tokens (the first token of a sequence has
    no prediction and is skipped): how far the rollout engine's numbers are from the trainer's."""
    gaps = [abs(a - b) for s, before in zip(sequences, sampled)
            for j, (a, b, m) in enumerate(zip(before, s.old_logprobs, s.loss_mask)) if m and j > 0]
    if not gaps:
        return None
    return {"mean": float(np.mean(gaps)), "max": float(np.max(gaps)), "tokens": len(gaps)}


# ---------------------------------------------------------------------------------------------------------
# update
# ---------------------------------------------------------------------------------------------------------


@dataclass
class UpdateStats:
    policy_loss: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0
    clip_fraction: float = 0.0
    ratio_max: float = 1.0
    ratio_min: float = 1.0
    grad_norm: float = 0.0
    first_loss: float | None = None  # loss of the first mini-batch, before any update of this step
    optimizer_steps: int = 0
    tokens: int = 0
    losses: list[float] = field(default_factory=list)


def ppo_update(model: Any, optimizer: Any, scheduler: Any, sequences: Sequence[TokenSequence], config: GRPOConfig,
               pad_id: int, bf16: bool, generator: torch.Generator, dist: Distributed = Distributed()) -> UpdateStats:
    """``ppo_epochs`` x ``ppo_mini_batches`` optimizer steps on the GRPO loss (above). Under data parallelism
    every rank draws the same mini-batches and backpropagates the sequences it owns (train.distributed)."""
    stats = UpdateStats()
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for _ in range(config.ppo_epochs):
        order = torch.randperm(len(sequences), generator=generator).tolist()
        for mini in np.array_split(np.array(order, dtype=np.int64), min(config.ppo_mini_batches, len(order))):
            optimizer.zero_grad(set_to_none=True)
            sums = accumulate_gradients(model, [sequences[i] for i in mini.tolist()], config, pad_id, bf16, dist)
            if dist.world > 1:
                if not is_sharded(model):  # FSDP2's reduce-scatter has summed them already
                    dist.sum_gradients(trainable)
                (sums.first_loss, sums.policy_loss, sums.kl, sums.entropy, sums.clip_fraction) = dist.reduce(
                    [sums.first_loss, sums.policy_loss, sums.kl, sums.entropy, sums.clip_fraction])
                sums.ratio_max, sums.ratio_min = dist.reduce([sums.ratio_max], "max")[0], \
                    dist.reduce([sums.ratio_min], "min")[0]
            max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, max_norm))
            optimizer.step()
            scheduler.step()
            if stats.first_loss is None:
                stats.first_loss = sums.first_loss
            stats.losses.append(sums.first_loss)
            stats.optimizer_steps += 1
            stats.tokens += sums.tokens
            k = stats.optimizer_steps  # running means over mini-batches
            for name in ("policy_loss", "kl", "entropy", "clip_fraction"):
                setattr(stats, name, getattr(stats, name) + (getattr(sums, name) - getattr(stats, name)) / k)
            stats.ratio_max = max(stats.ratio_max, sums.ratio_max)
            stats.ratio_min = min(stats.ratio_min, sums.ratio_min)
            stats.grad_norm += (grad_norm - stats.grad_norm) / k
    model.eval()
    return stats


def accumulate_gradients(model: Any, chunk: Sequence[TokenSequence], config: GRPOConfig, pad_id: int,
                         bf16: bool, dist: Distributed = Distributed()) -> UpdateStats:
    """Backpropagate one mini-batch's loss (tokens weighted by the run's loss aggregation over the whole
    mini-batch), micro-batch by micro-batch; return its loss terms (``first_loss`` = the mini-batch's loss).
    Under data parallelism this rank runs its share of the mini-batch's micro-batches -- the same micro-batches
    one process would run -- and the terms are its share, summed over the ranks by the caller."""
    device = model_device(model)
    n_tokens = sum(s.n_loss_tokens for s in chunk)
    weights = sequence_token_weights([s.n_loss_tokens for s in chunk],
                                     loss_aggregation_for(config.estimator, config.loss_aggregation),
                                     config.max_new_tokens)
    sums = UpdateStats(first_loss=0.0, tokens=n_tokens)
    for indices, batch, logprobs, entropy in forward_micro_batches(model, chunk, config.micro_batch_tokens, pad_id,
                                                                   bf16, config.temperature, with_entropy=True,
                                                                   mine=dist.owns,
                                                                   balanced_to=_balanced(model, chunk, config, dist)):
        if not indices:  # FSDP2 padding: a collective forward and backward that contributes nothing
            (logprobs.sum() * 0.0 + entropy.sum() * 0.0).backward()
            continue
        micro = [chunk[i] for i in indices]
        select = batch["loss_mask"]
        token_weights = torch.tensor([weights[i] for i in indices for _ in range(_loss_positions(chunk[i]))],
                                     dtype=torch.float32, device=device)
        terms = grpo_loss(
            logprobs, batch["old_logprobs"][select].to(device), batch["advantages"][select].to(device),
            torch.ones_like(logprobs, dtype=torch.bool), token_weights,
            clip_low=config.clip_range, clip_high=config.clip_range_high or config.clip_range,
            ref_logprobs=_flat(micro, "ref_logprobs", device) if config.kl_coef > 0 else None,
            kl_coef=config.kl_coef, entropy=entropy, entropy_coef=config.entropy_coef,
        )
        # FSDP2 averages gradients over the ranks; scaling by the world size makes that average their sum
        (terms.loss * dist.world if is_sharded(model) else terms.loss).backward()
        sums.first_loss += float(terms.loss.detach())
        sums.policy_loss += terms.policy_loss
        sums.kl += terms.kl
        sums.entropy += terms.entropy
        sums.clip_fraction += terms.clip_fraction
        sums.ratio_max = max(sums.ratio_max, terms.ratio_max)
        sums.ratio_min = min(sums.ratio_min, terms.ratio_min)
    return sums


def _balanced(model: Any, sequences: Sequence[TokenSequence], config: GRPOConfig, dist: Distributed) -> int:
    """How many forward passes every rank runs over ``sequences`` when ``model`` is FSDP2-sharded (0 = only its
    own micro-batches; replicated models need no padding)."""
    from train.policy import shares_prefix
    from train.sequences import forward_batches

    if not is_sharded(model):
        return 0
    return dist.balanced_count(len(forward_batches(sequences, config.micro_batch_tokens, share=shares_prefix(model))))


def _loss_positions(sequence: TokenSequence) -> int:
    """How many of the sequence's loss tokens the shifted forward predicts (all but one at position 0)."""
    return sum(1 for j, m in enumerate(sequence.loss_mask) if m and j > 0)


def _flat(sequences: Sequence[TokenSequence], attribute: str, device: torch.device) -> torch.Tensor:
    """A per-token attribute of the loss tokens, flat in the order :func:`selected_logprobs` uses."""
    return torch.tensor([v for s in sequences for j, (v, m) in enumerate(zip(getattr(s, attribute), s.loss_mask))
                         if m and j > 0], dtype=torch.float32, device=device)


def update_policy(policy: Any, reference: Any, optimizer: Any, scheduler: Any, sequences: Sequence[TokenSequence],
                  config: GRPOConfig, pad_id: int, bf16: bool, seed: int, dist: Distributed,
                  profile: dict[str, float]) -> tuple[UpdateStats, dict[str, float] | None]:
    """One step's update: the logprob passes the loss needs (recomputed old logprobs where configured, the frozen
    reference's for the KL), then :func:`ppo_update` with mini-batches drawn from ``seed``. Returns the update's
    statistics and the sampler/trainer logprob gap (None unless old logprobs were recomputed); adds
    ``reference_s`` to ``profile``. No sequences: no update."""
    stats, mismatch = UpdateStats(), None
    if not sequences:
        return stats, mismatch
    if config.recompute_old_logprobs:
        sampled = [list(s.old_logprobs) for s in sequences]
        fill_logprobs(policy, sequences, "old_logprobs", config, pad_id, bf16, dist)
        mismatch = logprob_gap(sequences, sampled)
    if reference is not None:
        t_reference = time.perf_counter()
        with reference.model() as ref_model:
            fill_logprobs(ref_model, sequences, "ref_logprobs", config, pad_id, bf16, dist)
        profile["reference_s"] = time.perf_counter() - t_reference
    generator = torch.Generator().manual_seed(seed)
    return ppo_update(policy, optimizer, scheduler, sequences, config, pad_id, bf16, generator, dist), mismatch
