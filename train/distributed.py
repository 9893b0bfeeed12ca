"""Data-parallel GRPO on torch.distributed: ``torchrun --nproc-per-node N -m train --config FILE``.

Every rank holds the whole policy (DDP's replication; FSDP2 sharding is not implemented yet). One step:

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
4. **Rank 0** writes the metrics, checkpoints and the final model; a run resumes from a checkpoint at any world
   size, since every rank holds the whole state.

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
