"""Checks for multi-process launches: where a launch silently gets fewer processes, or no sharding,
than it asked for, or crashes inside ``accelerate`` before any of our code runs.

Three upstream behaviours (accelerate 1.15, transformers 5.24) are handled here:

- ``accelerate launch --cpu --num_processes N`` with ``N > 1`` and no ``--mpirun_hostfile`` starts
  *one* process (multi-CPU runs under accelerate are meant for ``mpirun``); it only exports
  ``MASTER_ADDR``/``MASTER_PORT``. That one process trains alone, with the wrong global batch. The
  working two-process CPU line is ``accelerate launch --multi_gpu --num_processes 2`` (torchrun
  underneath) with ``use_cpu: true`` in the config, or ``torchrun --nproc_per_node 2``.
- In a single process, a ``ddp_backend`` (``gloo``, ``nccl``) makes ``PartialState`` call
  ``torch.distributed.get_world_size()`` on a process group nobody initialized: "Default process
  group has not been initialized, please make sure to call init_process_group." A single process
  needs no backend, so :func:`single_process_backend` drops it.
- ``accelerate`` applies FSDP only to GPU-like distributed types; with ``use_cpu`` (or on a machine
  without GPUs) an FSDP config yields plain DDP with every parameter on every rank, and nothing says so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
TRUE = ("1", "true", "yes")


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def launched_world_size(environ: Mapping[str, str] | None = None) -> int:
    """The number of processes a launcher (torchrun, mpirun, accelerate) said this run has; 1 when none did."""
    env = _environ(environ)
    for name in WORLD_SIZE_VARIABLES:
        value = env.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def is_single_process(environ: Mapping[str, str] | None = None) -> bool:
    """True when no launcher gave this process peers: no ``LOCAL_RANK`` and no world size above 1."""
    env = _environ(environ)
    return "LOCAL_RANK" not in env and launched_world_size(env) == 1


def single_process_backend(ddp_backend: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """``ddp_backend``, or None in a single process, where accelerate 1.15 crashes on any backend
    ("Default process group has not been initialized") and none is needed."""
    return None if ddp_backend and is_single_process(environ) else ddp_backend


def cpu_launch_warning(environ: Mapping[str, str] | None = None) -> str | None:
    """The warning for a process started by ``accelerate launch --cpu --num_processes N`` (N > 1) without
    ``mpirun``: accelerate exported ``MASTER_ADDR`` for several processes but started only this one."""
    env = _environ(environ)
    if env.get("ACCELERATE_USE_CPU", "").lower() not in TRUE or not env.get("MASTER_ADDR"):
        return None
    if not is_single_process(env):
        return None
    return (
        "this process was started by `accelerate launch --cpu` for several processes, but accelerate starts "
        "only one without --mpirun_hostfile (multi-CPU runs under accelerate use mpirun): it trains alone, "
        "with a smaller global batch than asked. For several CPU processes on one machine run "
        "`accelerate launch --multi_gpu --num_processes N -m vift_plugin.cli train CONFIG.yaml` with "
        "`use_cpu: true` in CONFIG.yaml, or `torchrun --nproc_per_node N -m vift_plugin.cli train CONFIG.yaml`."
    )


def fsdp_requested(args: Any, environ: Mapping[str, str] | None = None) -> bool:
    """True when FSDP was asked for: by ``accelerate launch`` with an FSDP config or by ``--fsdp``."""
    env = _environ(environ)
    return env.get("ACCELERATE_USE_FSDP", "").lower() in TRUE or bool(getattr(args, "fsdp", None))


def fsdp_off_warning(args: Any, fsdp_enabled: bool, environ: Mapping[str, str] | None = None) -> str | None:
    """The warning for a run that asked for FSDP and got none (accelerate shards on GPUs only)."""
    if fsdp_enabled or not fsdp_requested(args, environ):
        return None
    where = "with use_cpu" if getattr(args, "use_cpu", False) else "without a GPU"
    return (
        f"FSDP was requested, but accelerate does not shard {where}: every rank holds the whole model "
        "(plain DDP). FSDP needs GPUs; on CPU use torchrun or `accelerate launch --multi_gpu` without an FSDP config."
    )


def check_world_size(
    world_size: int, use_cpu: bool, distributed_type: str | None = None, environ: Mapping[str, str] | None = None
) -> None:
    """Raise when a multi-process launch would train unsynchronized: the launcher started several
    processes but accelerate counts fewer, or counts them but set up no distributed type.

    Both happen under torchrun (or ``accelerate launch --multi_gpu``) on a machine without GPUs and
    without ``use_cpu``: with no ``ddp_backend`` every process believes it is rank 0 of 1 and trains
    alone on all the data, all writing one output folder; with ``ddp_backend: gloo`` the processes
    form a group but the model is not wrapped for data parallelism, so gradients are never averaged
    (and the logged loss is the world size times too large).
    """
    launched = launched_world_size(environ)
    hint = "" if use_cpu else " Without GPUs set use_cpu: true (the CPU processes then talk over gloo)."
    if launched > 1 and world_size < launched:
        raise ValueError(
            f"the launcher started {launched} processes, but accelerate sees a world of {world_size}: each "
            f"process would train alone on all the data and write the same output folder.{hint}"
        )
    if world_size > 1 and distributed_type == "NO":
        raise ValueError(
            f"{world_size} processes but no distributed setup (accelerate's distributed type is NO): the model "
            f"would not be wrapped for data parallelism and no gradient would be averaged across them.{hint}"
        )


def check_images_once(dataset: Any, *, skip_bad: bool, **images: Any) -> Any:
    """:func:`~vift_plugin.data.images.check_images` with every image decoded once per run, not once per rank.

    Under ``torch.distributed`` rank 0 decodes and sends what it found (or the error it hit, so no rank
    waits forever); every rank then keeps the same rows or raises the same error. Decoding 1.7M captions'
    images takes minutes, and eight ranks each decoding them all on one node's CPUs takes eight times longer.
    ``images`` are :func:`~vift_plugin.data.images.image_problems`' keywords.
    """
    import torch.distributed as dist

    from vift_plugin.data.images import check_images, drop_bad_images, image_problems

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return check_images(dataset, **images, skip_bad=skip_bad)[0]
    found: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            found[0] = ("problems", image_problems(dataset, **images))
        except Exception as error:  # noqa: BLE001 - sent to every rank, raised there
            found[0] = ("error", f"{type(error).__name__}: {error}")
    dist.broadcast_object_list(found, src=0)
    kind, value = found[0]
    if kind == "error":
        raise RuntimeError(f"the image check on rank 0 failed: {value}")
    logger.info("images checked on rank 0: %d row(s) with an unusable image", len(value))
    return drop_bad_images(dataset, value, skip_bad=skip_bad)[0]
