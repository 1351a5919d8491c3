"""Rationale extraction from the command line:

  python -m sbsd_jax.teacher --dataset=cqa --split=train --data_dir=datasets \\
      --base_url=http://localhost:8000/v1 --model=<served model name> [--chat] [--shots=N]
      [--prompt_file=my_prompts.json] [--n_samples=5 --temperature=0.7] [--keep_only_correct]

Writes {out_dir}/{dataset}/llm/{split}_CoT_{i}.json (out_dir defaults to data_dir, i.e. where
the paper-layout reader looks) plus {out_dir}/{dataset}/teacher/{split}/ records, manifest and
report. Rerun the same command after a crash or Ctrl-C to continue. Exit status: 0 done,
1 bad flags or data (one line naming the flag, or the file and line), 2 refused (changed
run, another run holds the lock, damaged records, a server that does not sample although
--n_samples > 1 and --temperature > 0 ask it to), 3 some examples still lack a completion
(rerun to retry them), 4 teacher unavailable, 130 interrupted.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from sbsd_jax.teacher.client import (
    API_KEY_ENV,
    MAX_TOKENS_FIELDS,
    ClientConfig,
    OpenAICompatibleClient,
    RetryPolicy,
    SamplingParams,
)
from sbsd_jax.teacher.generation import (
    DEFAULT_CHUNK_SIZE,
    GenerationConfig,
    TeacherDoesNotSampleError,
    TeacherUnavailableError,
    export_layout,
    generate,
)
from sbsd_jax.teacher.prompt_sets import PromptSetError, load_prompt_set
from sbsd_jax.teacher.run_store import (
    IncompleteRunError,
    RecordsFileError,
    RunLockedError,
    RunMismatchError,
)

FLAGS = flags.FLAGS

flags.DEFINE_string("dataset", None, "cqa | svamp | esnli | anli1 | gsm8k | synthetic | jsonl")
flags.DEFINE_string("split", "train", "Split to label: train | valid | test.")
flags.DEFINE_string("data_source", "paper", "paper | jsonl | hf | tfds | synthetic")
flags.DEFINE_string("data_dir", None, "Input data (paper layout root, JSONL folder, TFDS dir).")
flags.DEFINE_string("hf_name", None, "Hugging Face dataset name or local folder (source=hf).")
flags.DEFINE_string("hf_config", None, "Hugging Face dataset config (source=hf).")
flags.DEFINE_string("tfds_name", None, "TFDS builder name (source=tfds).")
flags.DEFINE_string("out_dir", None, "Output root; default: --data_dir.")
flags.DEFINE_string("name", None, "Folder under out_dir; default: the dataset name.")
flags.DEFINE_string(
    "base_url",
    os.environ.get("OPENAI_BASE_URL", "http://localhost:8000/v1"),
    "OpenAI-compatible API root, ending in /v1 (default $OPENAI_BASE_URL or localhost:8000).",
)
flags.DEFINE_string("model", None, "Model name as the server knows it.")
flags.DEFINE_string("api_key", None, f"API key; default ${API_KEY_ENV} (none for local servers).")
flags.DEFINE_bool("chat", False, "Use /chat/completions (exemplars as turns), not /completions.")
flags.DEFINE_string("prompt_file", None, "Own exemplar file (see sbsd_jax/teacher/prompts/).")
flags.DEFINE_integer("shots", None, "Number of exemplars to use; default: all in the file.")
flags.DEFINE_integer("n_samples", 1, "Samples per example; > 1 is self-consistency.")
flags.DEFINE_float("temperature", 0.0, "Sampling temperature (use > 0 with --n_samples > 1).")
flags.DEFINE_float("top_p", None, "Nucleus sampling; default: the server's.")
flags.DEFINE_integer("seed", None, "Sampling seed, for servers that support one.")
flags.DEFINE_integer("max_tokens", 256, "Completion length limit.")
flags.DEFINE_enum(
    "max_tokens_field",
    "max_tokens",
    list(MAX_TOKENS_FIELDS),
    "Request field carrying --max_tokens: max_completion_tokens for servers that require it.",
)
flags.DEFINE_bool(
    "allow_non_sampling",
    False,
    "Go on (with a warning) when --n_samples > 1 at temperature > 0 gets identical samples.",
)
flags.DEFINE_multi_string(
    "stop", None, "Stop sequence(s), '\\n' for a newline; default: the prompt set's."
)
flags.DEFINE_integer("concurrency", 8, "Requests in flight at once.")
flags.DEFINE_float("timeout_s", 120.0, "Per-request socket timeout.")
flags.DEFINE_integer("max_attempts", 8, "Attempts per request (429/5xx/timeouts are retried).")
flags.DEFINE_float("initial_backoff_s", 1.0, "First retry delay; doubles each retry (+-25%).")
flags.DEFINE_float("max_backoff_s", 60.0, "Longest retry delay (Retry-After is honoured).")
flags.DEFINE_integer("max_consecutive_failures", 25, "Stop after this many failures in a row.")
flags.DEFINE_bool(
    "keep_only_correct", False, "Write only rationales whose label matches the human label."
)
flags.DEFINE_bool("new_run", False, "Move an existing run aside and start over.")
flags.DEFINE_integer("limit", None, "Ask for at most this many examples now (try a teacher).")
flags.DEFINE_integer("chunk_size", DEFAULT_CHUNK_SIZE, "Completions per {split}_CoT_{i}.json.")
flags.DEFINE_bool("allow_missing", False, "Write the CoT files even if some examples failed ('').")
flags.DEFINE_bool("export_only", False, "Only (re)write the CoT files from the run's records.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")


EXIT_BAD_INPUT = 1


class BadInputError(Exception):
    """A flag or data file the run cannot use: printed as one line, without the flag help."""


def unescape_stop(value: str) -> str:
    """'\\n\\nQ:' typed in a shell -> two newlines and 'Q:'."""
    return value.replace("\\n", "\n").replace("\\t", "\t")


def _load_examples() -> list:
    from sbsd_jax.data.examples import DatasetSpec
    from sbsd_jax.data.sources import read_source

    spec = DatasetSpec(
        dataset=FLAGS.dataset,
        source=FLAGS.data_source,
        data_dir=FLAGS.data_dir,
        hf_name=FLAGS.hf_name,
        hf_config=FLAGS.hf_config,
        tfds_name=FLAGS.tfds_name,
        load_teacher=False,
    )
    try:
        splits = read_source(spec).splits
    except ValueError as error:  # DataFormatError, UnknownDatasetError: they name file/line
        raise BadInputError(f"{type(error).__name__}: {error}") from error
    if FLAGS.split not in splits:
        raise BadInputError(
            f"split {FLAGS.split!r} not in the {FLAGS.data_source} data "
            f"(has: {', '.join(splits)}); "
            "valid splits carved from train are labelled as part of train"
        )
    return splits[FLAGS.split]


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {' '.join(argv[1:])}")
    try:
        return _generate_or_export()
    except BadInputError as error:
        print(f"sbsd_jax.teacher: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _generate_or_export() -> int:
    if not FLAGS.dataset or not FLAGS.model:
        raise BadInputError("--dataset and --model are required")
    out_dir = FLAGS.out_dir or FLAGS.data_dir
    if not out_dir:
        raise BadInputError("--out_dir (or --data_dir) is required")
    if FLAGS.n_samples > 1 and FLAGS.temperature == 0.0:
        print(
            "warning: --n_samples > 1 at temperature 0 gives identical samples; "
            "self-consistency needs e.g. --temperature=0.7",
            file=sys.stderr,
        )
    try:
        prompt_set = load_prompt_set(FLAGS.dataset, FLAGS.prompt_file, shots=FLAGS.shots)
        sampling = SamplingParams(
            temperature=FLAGS.temperature,
            max_tokens=FLAGS.max_tokens,
            stop=tuple(unescape_stop(s) for s in FLAGS.stop) if FLAGS.stop else prompt_set.stop,
            n=FLAGS.n_samples,
            top_p=FLAGS.top_p,
            seed=FLAGS.seed,
        )
        config = GenerationConfig(
            dataset=FLAGS.dataset,
            split=FLAGS.split,
            out_dir=out_dir,
            model=FLAGS.model,
            name=FLAGS.name,
            chat=FLAGS.chat,
            sampling=sampling,
            concurrency=FLAGS.concurrency,
            keep_only_correct=FLAGS.keep_only_correct,
            new_run=FLAGS.new_run,
            chunk_size=FLAGS.chunk_size,
            max_consecutive_failures=FLAGS.max_consecutive_failures,
            limit=FLAGS.limit,
            allow_missing=FLAGS.allow_missing,
            base_url=FLAGS.base_url,
            progress=FLAGS.progress,
            allow_non_sampling=FLAGS.allow_non_sampling,
        )
    except (PromptSetError, ValueError) as error:
        raise BadInputError(str(error)) from error
    examples = _load_examples()
    client_config = ClientConfig(
        base_url=FLAGS.base_url,
        model=FLAGS.model,
        api_key=FLAGS.api_key,
        chat=FLAGS.chat,
        timeout_s=FLAGS.timeout_s,
        max_tokens_field=FLAGS.max_tokens_field,
        retry=RetryPolicy(
            max_attempts=FLAGS.max_attempts,
            initial_backoff_s=FLAGS.initial_backoff_s,
            max_backoff_s=FLAGS.max_backoff_s,
        ),
    )
    try:
        if FLAGS.export_only:
            files = export_layout(config, examples, prompt_set)
            print(f"wrote {len(files)} file(s) to {config.paths.llm_dir}")
            return 0
        report = generate(config, examples, prompt_set, OpenAICompatibleClient(client_config))
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    except (
        RunMismatchError,
        RunLockedError,
        RecordsFileError,
        IncompleteRunError,
        TeacherDoesNotSampleError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TeacherUnavailableError as error:
        print(f"error: the teacher is unavailable: {error}", file=sys.stderr)
        return 4
    print(report.summary())
    return 3 if report.missing else 0


if __name__ == "__main__":
    app.run(main)
