r"""Train and evaluate a student: `python -m sbsd_jax.main --config=configs/<exp>.py --workdir=DIR`.

Any config field can be overridden on the command line, e.g.
  python -m sbsd_jax.main --config=configs/cqa.py --workdir=/tmp/cqa \
      --config.alpha=0.3 --config.model=t5_v1_1_large --config.mesh.tensor=4
Running the same command again resumes from the newest checkpoint in DIR. SIGTERM (a preempted
VM) checkpoints the current step and exits with status 0. `--config.export_hf_dir=OUT` writes
the best (or, with --config.export_which=final, the last) student as a Hugging Face T5 folder.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from sbsd_jax.experiments.config_files import EXIT_CONFIG_ERROR, parse_config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py); override fields with --config.X=..."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, metrics.jsonl, TensorBoard, predictions."
)
flags.mark_flags_as_required(["config", "workdir"])

EXIT_BAD_INPUT = 1


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        # Orbax and friends log every checkpoint step at INFO; the console has the progress
        # bar and evaluation summaries. `--verbosity=0` brings the INFO logs back.
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    try:
        config.get("method")  # a config file that failed to load raises here, not at parse time
    except OSError as error:
        print(f"sbsd_jax.main: --config: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    # Imported here so `--help` and flag errors answer without loading JAX and TensorFlow.
    from sbsd_jax.runtime.run_storage import local_folder_problem

    if problem := local_folder_problem(_WORKDIR.value):
        print(f"sbsd_jax.main: --workdir: {problem}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    from sbsd_jax.runtime.jax_platforms import skip_absent_accelerators
    from sbsd_jax.runtime.xla_flags import apply_default_xla_flags

    apply_default_xla_flags()  # before JAX creates its backends
    skip_absent_accelerators()  # no libtpu start-up chatter where no TPU (or GPU) exists
    from sbsd_jax.settings.from_config import run_spec
    from sbsd_jax.settings.spec import ConfigError

    try:
        spec = run_spec(config)  # every group, once, before any side effect and TensorFlow
    except ConfigError as error:
        print(f"sbsd_jax.main: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    from sbsd_jax.data.examples import DataFormatError
    from sbsd_jax.model.hf_checkpoint import CheckpointError
    from sbsd_jax.train.checkpointing import CorruptCheckpointError
    from sbsd_jax.train.loop import train_and_evaluate

    new_workdir = not os.path.exists(_WORKDIR.value)
    try:
        summary = train_and_evaluate(spec, _WORKDIR.value)
    except ConfigError as error:
        return _refused(str(error), EXIT_CONFIG_ERROR, new_workdir)
    except (DataFormatError, CorruptCheckpointError, CheckpointError) as error:
        # Bad input files: the message names the file (and line / field, or tensor).
        return _refused(f"{type(error).__name__}: {error}", EXIT_BAD_INPUT, new_workdir)
    print(summary.describe())
    return 0


def _refused(message: str, status: int, new_workdir: bool) -> int:
    """One line, no traceback; a workdir this run made and left without a file goes again."""
    from sbsd_jax.runtime.run_storage import remove_empty_folders

    print(f"sbsd_jax.main: {message}", file=sys.stderr)
    if new_workdir:
        remove_empty_folders(_WORKDIR.value)
    return status


def run() -> None:
    from sbsd_jax.runtime.host_malloc import restart_with_huge_page_malloc

    restart_with_huge_page_malloc()  # once, before JAX starts any thread
    app.run(main, flags_parser=functools.partial(parse_config_flags, program="sbsd_jax.main"))


if __name__ == "__main__":
    run()
