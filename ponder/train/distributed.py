"""Where a training process runs: its device, and, under `torchrun`, its rank among the
others.

`torchrun --nproc_per_node=N` (and `--nnodes` with a rendezvous endpoint for several
machines) starts N copies of `ponder train`, each with RANK, WORLD_SIZE and LOCAL_RANK in
its environment. `Dist.from_environment` joins them into one process group (NCCL on
CUDA, gloo on the CPU); each rank then trains on its slice of every global batch,
`DistributedDataParallel` averages the gradients, and rank 0 alone writes files. A
plain launch is a world of one, and every collective here is then a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ponder.errors import PonderInputError


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """`auto`: CUDA (this rank's GPU under torchrun), else MPS, else the CPU."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise PonderInputError(f"config key 'train.device': unknown device {name!r}; expected auto, cpu, cuda or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise PonderInputError(f"config key 'train.device': {name} requested but CUDA is not available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise PonderInputError(f"config key 'train.device': {name} requested but MPS is not available")
        if device.type == "cuda" and device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank) if local_rank is not None else torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def launched() -> bool:
    """True when this process was started by torchrun (or another launcher that sets
    the distributed environment variables) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_environment(device_name: str) -> "Dist":
        """Join the launcher's process group (if any) and pick this rank's device."""
        if not launched():
            return Dist(device=pick_device(device_name))
        rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        device = pick_device(device_name, local_rank=local)
        if device.type == "mps":
            raise PonderInputError("torchrun with train.device=mps: MPS has no multi-process backend; use one process")
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
                dist.init_process_group("nccl", device_id=device)
            else:
                dist.init_process_group("gloo")
        return Dist(rank=rank, world=world, local_rank=local, device=device)

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    # ----------------------------------------------------------------- collectives

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's `x` (the same shape on each) along dim 0, in rank order."""
        if self.world == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over ranks (a new tensor; `x` is left alone)."""
        if self.world == 1:
            return x
        out = x.clone()
        dist.all_reduce(out)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is True on any (a host synchronisation)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous slice [start, stop) of n items (the last ranks may get
        fewer); every rank's slice has at most `ceil(n / world)` items."""
        per = -(-n // self.world)
        start = min(n, self.rank * per)
        return start, min(n, start + per)

    def gather_shards(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The (n, ...) whole from every rank's `shard(n)` slice of it, on every rank."""
        if self.world == 1:
            return x
        per = -(-n // self.world)
        padded = torch.zeros((per, *x.shape[1:]), dtype=x.dtype, device=self.device)
        padded[: x.shape[0]] = x.to(self.device)
        return self.all_gather(padded)[:n] if n else padded[:0]
