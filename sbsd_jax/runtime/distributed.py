"""Joining a multi-process JAX job (jax.distributed.initialize), from a DistributedSpec.

Multi-host GPU (and anything JAX cannot discover itself) uses the SBSD_* environment variables
that launch/gpu_host.sh documents; a Cloud TPU VM or a multi-process launcher (GKE TPU,
multi-slice, SLURM, Open MPI) is recognised by its own variables.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax

ENV_COORDINATOR = "SBSD_COORDINATOR"
ENV_NUM_PROCESSES = "SBSD_NUM_PROCESSES"
ENV_PROCESS_ID = "SBSD_PROCESS_ID"
MODES: tuple[str, ...] = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
    """config.distributed: mode auto | on | off; empty address / 0 processes / process id -1
    mean "let JAX discover, or read the SBSD_* variables"."""

    mode: str
    coordinator_address: str
    num_processes: int
    process_id: int


def _on_cloud_tpu_vm() -> bool:
    """TPU chips attached to this host (a Cloud TPU VM), checked without starting a backend."""
    try:
        from jax._src import hardware_utils

        chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
        return chips > 0
    except Exception:  # a private helper: if it moves, fall back to the explicit signals
        return False


def _launcher_started_several_processes() -> bool:
    tpu_hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return (
        len(tpu_hosts) > 1
        or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))  # multi-slice
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    )


def _use_gloo_on_cpu() -> None:
    """CPU-only processes need gloo for cross-process collectives (the default has none)."""
    platforms = [p for p in (jax.config.jax_platforms or "").split(",") if p]
    if platforms == ["cpu"]:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def maybe_initialize_distributed(spec: DistributedSpec) -> bool:
    """Calls jax.distributed.initialize when this process is part of a multi-process job.

    mode 'off' never initialises; 'on' always does; 'auto' does when a coordinator is given
    (spec.coordinator_address / num_processes / process_id, else SBSD_COORDINATOR /
    SBSD_NUM_PROCESSES / SBSD_PROCESS_ID), on a Cloud TPU VM (JAX finds its peers itself; one
    host works too), or under a multi-process launcher. A single CPU/GPU process needs nothing.
    Returns True if it initialised. Must run before anything touches jax.devices(); the
    settings were validated before (sbsd_jax.settings), so a bad value here is a bug.
    """
    if jax.distributed.is_initialized():
        return True  # already joined (e.g. an earlier cell of a sweep in this process)
    if spec.mode not in MODES:
        raise ValueError(f"config.distributed.mode={spec.mode!r}: choose auto, on or off")
    if spec.mode == "off":
        return False
    coordinator = spec.coordinator_address or os.environ.get(ENV_COORDINATOR, "")
    num_processes = int(spec.num_processes or os.environ.get(ENV_NUM_PROCESSES, 0))
    process_id = spec.process_id
    if process_id < 0:
        process_id = int(os.environ.get(ENV_PROCESS_ID, -1))
    if coordinator:
        if num_processes < 1 or process_id < 0:
            raise ValueError(
                f"a coordinator address ({coordinator}) needs the number of processes and this "
                f"process's id: set config.distributed.num_processes/process_id or "
                f"{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}"
            )
        if num_processes == 1 and spec.mode == "auto":
            return False
        _use_gloo_on_cpu()
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    elif spec.mode == "on" or _on_cloud_tpu_vm() or _launcher_started_several_processes():
        _use_gloo_on_cpu()
        jax.distributed.initialize()
    else:
        return False
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    return True
