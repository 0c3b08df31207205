"""What a launcher (``accelerate launch``, ``torchrun``, SLURM through accelerate) started us as.

Accelerate decides devices and process groups; two things it does not do for us:
  * on a machine with no accelerator it runs every process of a ``torchrun`` / ``accelerate launch
    --multi_gpu`` launch as its own 1-process job unless told ``cpu=True`` (then: gloo, one job);
  * every process must write into one run dir, but Hydra's ``${now:}`` is read by each process at its
    own moment: ``${launch_time:FORMAT}`` is rank 0's start time, broadcast to the others.
"""

from __future__ import annotations

import functools
import os
from datetime import datetime

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from omegaconf import OmegaConf


def world_size() -> int:
    """Processes in this launch, from the launcher's environment (no process group needed)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _has_accelerator() -> bool:
    probe = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, MPS, ... in one call
    return probe.is_available() if probe is not None else torch.cuda.is_available()


def cpu_only() -> bool:
    """A multi-process launch on a machine without an accelerator: the processes train together on CPU."""
    return world_size() > 1 and not _has_accelerator()


def single_cpu_process_of_several() -> bool:
    """``accelerate launch --cpu --num_processes N``: accelerate starts one process (it sets the
    rendezvous address for N but starts them only through mpirun)."""
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return use_cpu and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ


def fast_bf16() -> bool:
    """bf16 matmuls run natively here: a CUDA GPU with bf16 (Ampere+), or a CPU with AVX512-BF16 / AMX
    (there bf16 autocast takes a 2-layer KD step to ~0.6× its fp32 time: benchmarks/precision.py)."""
    if _has_accelerator():
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def resolve_precision(value: str | None) -> str | None:
    """``auto`` → bf16 where it runs natively (fast_bf16), else no; other values as they are."""
    return ("bf16" if fast_bf16() else "no") if value == "auto" else value


def effective_precision(value: str | None) -> str:
    """What a run with ``trainer.mixed_precision=value`` trains in: null → the launcher's (``accelerate
    launch`` sets the env accelerate reads), auto → this machine's (resolve_precision)."""
    return resolve_precision(value or os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower())


def launcher_grad_accum() -> int:
    return int(os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1"))


def state() -> PartialState:
    """The process state every part of a run shares (the engine's Accelerator reuses it)."""
    return PartialState(cpu=cpu_only())


@functools.cache
def launch_time() -> datetime:
    """Rank 0's clock, the same on every process of one launch (each process asks once, in step)."""
    if world_size() == 1:
        return datetime.now()
    stamp = [datetime.now().isoformat() if state().is_main_process else None]
    broadcast_object_list(stamp)
    return datetime.fromisoformat(stamp[0])


def register_resolvers() -> None:
    """``${launch_time:%Y-%m-%d_%H-%M-%S}`` in configs (conf/config.yaml's run and sweep dirs)."""
    if not OmegaConf.has_resolver("launch_time"):
        OmegaConf.register_new_resolver("launch_time", lambda fmt: launch_time().strftime(fmt))
