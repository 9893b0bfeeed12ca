"""Data-parallel GRPO on torch.distributed: ``torchrun --nproc-per-node N -m train --config FILE``.

``data_parallel: replicate`` (default): every rank holds the whole policy and its optimizer state.
``data_parallel: fsdp2``: the policy, the frozen reference and the optimizer state are sharded over the ranks
with FSDP2 (``fully_shard`` per decoder layer, then the whole model); see :class:`FSDP2Policy`. One step:

1. **Rollouts, sharded.** The step's prompts are split into contiguous shards, one per rank; each rank rolls out
   the whole group of G episodes of each of its prompts, so no group is ever split. Sampling seeds depend on
   (run seed, step, dialogue, group member, action) only, so the episodes are the ones one process would sample.
2. **Gather.** Every rank receives every episode (``all_gather_object``, in rank order: the single-process
   order) and computes the same advantages and training sequences.
3. **Update, sharded.** Each forward pass over the step's sequences (old and reference logprobs, then every
   mini-batch of the update) is cut into the micro-batches one process would run, and micro-batch ``k`` runs
   on rank ``k % world``; logprobs are gathered to every rank. The loss's token weights are computed over the
   whole mini-batch, so the sum of the ranks' gradients is the one-process gradient, up to the order of the
   floating-point additions. Gradients are summed across ranks (``all_reduce``) before clipping and every rank
   takes the same optimizer step, so the replicas stay identical.
   Under FSDP2 every forward pass is collective, so each rank runs the same number of micro-batches: a rank
   with fewer real ones runs the first micro-batch again with zero loss (``forward_micro_batches(...,
   balanced_to=...)``), and FSDP2's reduce-scatter replaces the all-reduce (it averages, so each rank's loss is
   scaled by the world size to get the sum).
4. **Rank 0** writes the metrics and the final model. Replicated runs checkpoint on rank 0 and resume at any
   world size; FSDP2 runs write sharded checkpoints (torch.distributed.checkpoint, every rank its shard) that
   resume on the same world size.

Without ``torchrun`` (no ``WORLD_SIZE`` above 1 in the environment) :func:`init_distributed` returns the
one-process context, under which all of the above reduces to the plain single-process trainer. The backend is
``gloo`` on CPUs and ``nccl`` on CUDA devices; ``torchrun`` provides the rendezvous (docs/training.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[Any]) -> list[Any]:
        """This rank's contiguous share of ``items`` (sizes differ by at most one; earlier ranks get more)."""
        base, extra = divmod(len(items), self.world)
        start = self.rank * base + min(self.rank, extra)
        return list(items[start:start + base + (1 if self.rank < extra else 0)])

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's ``items``, concatenated in rank order, on every rank."""
        if self.world == 1:
            return items
        import torch.distributed as dist

        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, items)
        return [item for part in parts for item in part]

    def owns(self, index: int) -> bool:
        """Whether work item ``index`` (a micro-batch) is this rank's: round robin."""
        return index % self.world == self.rank

    def sum_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Sum the ranks' gradients in place (a rank that saw no token contributes zeros)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)

    def reduce(self, values: Sequence[float], op: str = "sum") -> list[float]:
        """``values`` reduced element-wise over the ranks (``op``: sum, max or min), on every rank."""
        if self.world == 1:
            return list(values)
        import torch.distributed as dist

        tensor = torch.tensor(list(values), dtype=torch.float64)
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                                    "min": dist.ReduceOp.MIN}[op])
        return tensor.tolist()

    def balanced_count(self, items: int) -> int:
        """How many of ``items`` round-robin work items the busiest rank owns (FSDP2 pads every rank to it)."""
        return -(-items // self.world)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def init_distributed() -> Distributed:
    """The context of this process: joins the process group that ``torchrun`` set up (``WORLD_SIZE`` > 1), or
    the one-process context. Idempotent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return Distributed(rank=dist.get_rank(), world=dist.get_world_size())


class FSDP2Policy:
    """A policy (and its frozen reference) sharded with FSDP2 over the ranks, and the full-weight views the
    trainer needs outside the update: rollouts sample from :meth:`full_model` (a rank-local unsharded copy
    refreshed from the shards; every rank must call it, it gathers) and the final model is saved from it.

    Models are sharded per decoder layer, then as a whole (embeddings, final norm and a tied output head stay
    together in the root unit). FSDP2 averages gradients over the ranks; the trainer scales each rank's loss by
    the world size so that the result is their sum, as the loss weights over the whole mini-batch require (a
    custom divide factor would need a reduce op that gloo lacks).
    """

    def __init__(self, policy: torch.nn.Module, reference: torch.nn.Module | None, dist: "Distributed"):
        import copy

        from torch.distributed.device_mesh import init_device_mesh

        self.dist = dist
        self.local = copy.deepcopy(policy).eval()  # the rollout copy, never trained directly
        for parameter in self.local.parameters():
            parameter.requires_grad_(False)
        mesh = init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (dist.world,))
        self.policy = _fully_shard(policy, mesh)
        self.reference = _fully_shard(reference, mesh) if reference is not None else None

    def full_model(self) -> torch.nn.Module:
        """The rank-local unsharded copy holding the policy's current weights (collective)."""
        self.local.load_state_dict(self.full_state_dict())
        return self.local

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True))


def _fully_shard(model: torch.nn.Module, mesh: Any) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for layer in getattr(decoder, "layers", []):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: Any) -> bool:
    """Whether ``model`` is an FSDP2 module (its forward passes are collective)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
