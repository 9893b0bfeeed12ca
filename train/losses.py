"""The GRPO objective per token: PPO-clip policy loss, k3 KL to a frozen reference, entropy, clip fraction.

All functions take per-token tensors of one shape (``[batch, positions]``) and a boolean ``mask`` that is True
exactly on policy-generated tokens (DESIGN.md, "Training token bookkeeping": prompts, user messages and tool
responses carry no loss). Aggregation is the *token mean over a whole mini-batch*: each micro-batch returns
sums divided by ``n_tokens``, the number of loss tokens of the mini-batch, so accumulating the gradients of its
micro-batches gives exactly the gradient of the full mini-batch's token mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(target), entropy)`` per position under ``softmax(logits / temperature)``.

    ``logits``: ``[..., vocab]``; ``targets``: ``[...]`` token ids. The temperature matches the sampler's
    (the agent's logprobs are those of ``logits / temperature``), so a ratio of 1 means "same distribution".
    Entropy is in nats, computed in float32.
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    log_norm = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_norm
    probs = torch.softmax(logits, dim=-1)
    entropy = log_norm - (probs * logits).sum(-1)
    return logprobs, entropy


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
    tokens: int


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    n_tokens: int,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> LossSums:
    """Token-mean GRPO loss of one micro-batch: PPO-clip + kl_coef * k3 KL - entropy_coef * entropy.

    ``n_tokens`` is the number of loss tokens in the whole mini-batch (> 0). The KL term needs ``ref_logprobs``
    when ``kl_coef > 0``; with ``kl_coef == 0`` no reference is needed and the KL is reported only if given.
    """
    if n_tokens <= 0:
        raise ValueError("n_tokens must be positive: a mini-batch without policy tokens has no loss")
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs from the frozen reference model")
    maskf = mask.to(logprobs.dtype)
    per_token, clipped = ppo_clip_terms(logprobs, old_logprobs, advantages, clip_low, clip_high)
    policy_sum = (per_token * maskf).sum() / n_tokens
    loss = policy_sum
    kl_value = 0.0
    if ref_logprobs is not None:
        kl_sum = (k3_kl(logprobs, ref_logprobs) * maskf).sum() / n_tokens
        kl_value = float(kl_sum.detach())
        if kl_coef > 0:
            loss = loss + kl_coef * kl_sum
    entropy_value = 0.0
    if entropy is not None:
        entropy_sum = (entropy * maskf).sum() / n_tokens
        entropy_value = float(entropy_sum.detach())
        if entropy_coef > 0:
            loss = loss - entropy_coef * entropy_sum
    with torch.no_grad():
        ratio = torch.exp(logprobs - old_logprobs)
        ratio_max = float(ratio[mask].max()) if bool(mask.any()) else 1.0
    return LossSums(
        loss=loss,
        policy_loss=float(policy_sum.detach()),
        kl=kl_value,
        entropy=entropy_value,
        clip_fraction=float((clipped & mask).sum()) / n_tokens,
        ratio_max=ratio_max,
        tokens=int(mask.sum()),
    )
