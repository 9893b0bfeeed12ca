"""``python -m train ...`` is ``cm2 train ...``; under ``torchrun --nproc-per-node N -m train --config FILE``
each process is one rank of a data-parallel run (train.distributed)."""

from train.cli import train

if __name__ == "__main__":
    train(prog_name="python -m train")
