"""GPU machines: a SLURM job over several nodes (launch/slurm.sbatch: one task per node, the
first node coordinates) or a single host whose one process drives all its GPUs."""

from __future__ import annotations

import dataclasses
import pathlib

from sbsd_jax.cloud.job import TrainJob

Command = tuple[list[str], dict[str, str]]  # argv and the environment it adds


def jax_version(root: pathlib.Path) -> str:
    """The jax pin of requirements.txt (the CUDA build must match it)."""
    for line in (root / "requirements.txt").read_text().splitlines():
        if line.startswith("jax=="):
            return line.removeprefix("jax==").split()[0]
    raise ValueError(f"{root / 'requirements.txt'}: no jax==... line")


def install_commands(root: pathlib.Path) -> list[Command]:
    """The environment (.venv in the repository, on a shared filesystem for SLURM) with the
    CUDA build of jax; both steps are quick when already done."""
    return [
        (["bash", str(root / "launch" / "setup_env.sh")], {}),
        (
            [
                str(root / ".venv" / "bin" / "pip"),
                "install",
                "-q",
                f"jax[cuda13]=={jax_version(root)}",
            ],
            {},
        ),
    ]


def train_command(job: TrainJob, root: pathlib.Path, gpus: str = "") -> Command:
    """Training on this host: one process, every visible GPU in the mesh (`gpus`, e.g.
    "0,1,2,3", restricts it through CUDA_VISIBLE_DEVICES)."""
    train = [str(root / ".venv" / "bin" / "python"), "-m", "sbsd_jax.main", *job.trainer_args()]
    return train, ({"CUDA_VISIBLE_DEVICES": gpus} if gpus else {})


@dataclasses.dataclass(frozen=True)
class SlurmRequest:
    """What sbatch is asked for: whole nodes, one task (one JAX process) on each."""

    nodes: int
    gpus_per_node: int = 8
    partition: str = ""
    time_limit: str = ""  # e.g. 24:00:00
    account: str = ""
    job_name: str = "sbsd-jax"

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise ValueError(
                f"--nodes and --gpus_per_node must be >= 1, got {self.nodes}, {self.gpus_per_node}"
            )


def sbatch_command(request: SlurmRequest, job: TrainJob, root: pathlib.Path) -> list[str]:
    argv = [
        "sbatch",
        f"--job-name={request.job_name}",
        f"--nodes={request.nodes}",
        "--ntasks-per-node=1",
        f"--gpus-per-node={request.gpus_per_node}",
        "--exclusive",
        f"--chdir={root}",
    ]
    argv += [f"--partition={request.partition}"] if request.partition else []
    argv += [f"--time={request.time_limit}"] if request.time_limit else []
    argv += [f"--account={request.account}"] if request.account else []
    return [*argv, str(root / "launch" / "slurm.sbatch"), job.config, job.workdir, *job.overrides]
