"""Where training runs: the device, the distributed world under ``torchrun``, the autocast
dtype, and the GPU's peak FLOP/s for MFU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from NVIDIA data sheets. Matched as
# substrings of torch.cuda.get_device_name(), most specific first ("A100" before "A10").
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GB200", 2500.0), ("B200", 2250.0), ("H200", 989.0), ("GH200", 989.0),
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A10G", 70.0), ("A10", 125.0), ("RTX 6000 Ada", 364.0), ("A6000", 155.0),
    ("RTX 4090", 165.0), ("RTX 3090", 71.0), ("V100", 125.0), ("T4", 65.0),
)

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by name, or None when it is not in :data:`PEAK_TFLOPS`."""
    for key, value in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


@dataclass
class Dist:
    """This process's place in the distributed world (world size 1 without ``torchrun``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks in place (a no-op on one process); returns ``t``."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def init_distributed(device_flag: str) -> Dist:
    """Join the process group ``torchrun`` describes (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_flag != "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local)


def close_distributed(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def pick_device(flag: str, d: Dist) -> torch.device:
    if flag == "auto":
        return torch.device(f"cuda:{d.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if flag.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {flag}: CUDA is not available in this torch build/machine; use --device cpu")
    if flag == "cuda" and d.enabled:
        return torch.device(f"cuda:{d.local_rank}")
    return torch.device(flag)


def autocast_dtype(flag: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--dtype`` on ``device`` (None: no autocast, float32)."""
    if flag == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    dtype = DTYPES[flag]
    return None if dtype == torch.float32 else dtype
