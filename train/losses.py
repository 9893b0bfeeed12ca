"""The GRPO objective per token: PPO-clip policy loss, k3 KL to a frozen reference, entropy, clip fraction.

All functions take per-token tensors of one shape (``[batch, positions]``) and a boolean ``mask`` that is True
exactly on policy-generated tokens (prompts, user messages and tool responses carry no loss). A mini-batch's
loss is a weighted sum over its loss tokens, the weights summing to 1 over the mini-batch
(:func:`sequence_token_weights`), so accumulating the gradients of its micro-batches gives exactly the gradient
of the whole mini-batch. The weights say how tokens are aggregated (:data:`LOSS_AGGREGATIONS`):

- ``token-mean``: every loss token of the mini-batch weighs the same, 1/N (verl's default, the paper's runs);
- ``seq-mean-token-mean``: every sequence weighs the same, and its tokens share its weight (1/(S n_s)): a long
  sequence no longer outweighs a short one -- with token-mean, long failed completions dominate the gradient
  and push the policy's entropy up;
- ``seq-mean-token-sum-norm``: every token weighs 1/(S L) with a constant L (the completion budget), as Dr. GRPO
  (Liu et al., 2025, "Understanding R1-Zero-Like Training"): no length normalisation inside a sequence.

Here a "sequence" is a training sequence: one episode's actions, or a part of them when the chat template
re-renders the history (:mod:`train.sequences`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from train.config import LOSS_AGGREGATIONS


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
    s), for ``aggregation`` (module docstring); ``length_norm`` is Dr. GRPO's constant L. The weights of all loss
    tokens sum to 1 (token-mean, seq-mean-token-mean) or to (total tokens)/(S L) (seq-mean-token-sum-norm)."""
    if aggregation not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}")
    total, count = sum(loss_tokens), sum(1 for n in loss_tokens if n > 0)
    if total <= 0:
        raise ValueError("a mini-batch without policy tokens has no loss")
    if aggregation == "token-mean":
        return [1.0 / total] * len(loss_tokens)
    if aggregation == "seq-mean-token-mean":
        return [1.0 / (count * n) if n else 0.0 for n in loss_tokens]
    return [1.0 / (count * max(1, length_norm))] * len(loss_tokens)


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
