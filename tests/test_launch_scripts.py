"""The launch scripts, without a cloud: what the TPU workers would be asked to run, and the
environment set-up's refusal of a Python that JAX does not support."""

from __future__ import annotations

import os
import pathlib
import shlex
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]


def _fake_tool(directory: pathlib.Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(0o755)


def test_tpu_vm_sh_passes_every_argument_to_the_workers_intact(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    # A stand-in gcloud that records its arguments, one per line, NUL-terminated per call.
    _fake_tool(bin_dir, "gcloud", f'printf "%s\\n" "$@" >> {calls}; printf "\\0" >> {calls}')
    _fake_tool(bin_dir, "tar", "exit 0")
    overrides = [
        "--config.eval_splits=('valid', 'test')",
        "--config.model=t5_v1_1_large",
        "--config.alpha=0.3",
    ]
    result = subprocess.run(
        [
            "bash",
            str(REPO / "launch" / "tpu_vm.sh"),
            "configs/cqa.py",
            "gs://b/runs/x y",
            *overrides,
        ],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TPU_NAME": "t", "ZONE": "z"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    ssh_call = calls.read_text().split("\0")[1].splitlines()
    command = next(arg for arg in ssh_call if arg.startswith("--command="))
    trainer = command.split(".venv/bin/python -m sbsd_jax.main ", 1)[1]
    # How the worker's shell splits the trainer's arguments.
    assert shlex.split(trainer) == [
        "--config=configs/cqa.py",
        "--workdir=gs://b/runs/x y",
        *overrides,
    ]
    bash_split = subprocess.run(
        ["bash", "-c", f'printf "%s\\n" {trainer}'], capture_output=True, text=True, check=True
    )
    assert bash_split.stdout.splitlines()[2:] == overrides


def test_setup_env_refuses_a_python_older_than_3_11_with_what_to_do(tmp_path):
    old_python = tmp_path / "python3.10"
    old_python.write_text("#!/usr/bin/env bash\nexit 1\n")  # fails the version check
    old_python.chmod(0o755)
    result = subprocess.run(
        ["bash", str(REPO / "launch" / "setup_env.sh")],
        env={**os.environ, "PYTHON": str(old_python), "VENV": str(tmp_path / "venv")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "needs Python 3.11 or newer" in result.stderr
    assert "sudo apt-get install -y python3.11 python3.11-venv" in result.stderr
    assert not (tmp_path / "venv").exists()
