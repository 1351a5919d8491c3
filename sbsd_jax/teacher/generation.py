"""A teacher run: prompt the teacher for every example of one split, resumably, and write the
paper authors' layout that the trainer reads.

Files, for out_dir/{name} (name defaults to the dataset, so out_dir=data_dir puts the
rationales where the paper-layout reader looks by default):

  {name}/llm/{split}_CoT_{i}.json     the authors' layout: JSON lists of raw completions, 1000 a
                                      file, in example order (written when every example has one)
  {name}/teacher/{split}/records.jsonl  one JSON line per finished example (or failed attempt),
                                      appended and flushed as results arrive: provenance, raw
                                      completions, parsed rationale and label, token usage, time
  {name}/teacher/{split}/manifest.json  what makes the run what it is (teacher model, prompt set
                                      hash, sampling parameters, input fingerprint)
  {name}/teacher/{split}/report.json  teacher accuracy, parse failures, token usage

Resuming: a rerun reads records.jsonl (dropping a half-written last line left by a kill), skips
examples that already have a completion and asks only for the rest; an example is written once,
by the single writer thread, after its completion arrived. A failed request (retries exhausted,
a 4xx) is recorded as an error and retried by the next run. A rerun with another teacher, prompt,
sampling or input data is refused (RunMismatchError) unless new_run=True, which moves the old run
aside. A lock file keeps two generators off the same split.

Parsing uses the data side's `parse_completion` on exactly the text written to the CoT files, so
the report's rationales and labels are the ones training will read.

Self-consistency (n > 1 at temperature > 0) is only worth its cost from a server that samples;
some (`transformers serve`) ignore temperature and answer `n` with one choice. `check_sampling`
asks for the first examples before the run and refuses when all of them come back as copies
(TeacherDoesNotSampleError) unless allow_non_sampling; the report counts such examples too.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sbsd_jax.data.report import labels_match
from sbsd_jax.data.teacher_parsing import UnparseableCompletion, parse_completion
from sbsd_jax.teacher.client import (
    CompletionResult,
    NonRetryableRequestError,
    RetriesExhaustedError,
    SamplingParams,
)
from sbsd_jax.teacher.prompt_sets import PromptSet, render_prompt
from sbsd_jax.teacher.run_store import (
    IncompleteRunError,
    RunMismatchError,
    RunPaths,
    final_records,
    load_manifest,
    manifest_differences,
    prepare_run_dir,
    read_records,
    run_lock,
    write_cot_files,
    write_json_atomic,
)

RECORD_FORMAT = 1
DEFAULT_CHUNK_SIZE = 1000  # completions per {split}_CoT_{i}.json, as the authors' CQA files


class TeacherUnavailableError(RuntimeError):
    """The teacher keeps failing (auth, unknown model, or too many failures in a row)."""


class TeacherDoesNotSampleError(RuntimeError):
    """Self-consistency was asked for (n > 1, temperature > 0) from a server whose samples are
    copies of one another: the vote would count one completion n times."""


SAMPLING_PROBES = 2  # examples asked before the run to check that the server samples


class ExampleLike(Protocol):
    """What a run needs from an example (data's RawExample and Example both fit)."""

    id: str
    input: str
    label: str


class CompletionBackend(Protocol):
    def complete(self, prompt: Any, params: SamplingParams) -> CompletionResult: ...


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """One run's settings. Identity (checked on resume): dataset, split, model, chat, prompt
    set, sampling, inputs. The rest can change between reruns."""

    dataset: str
    split: str
    out_dir: str
    model: str
    name: str | None = None  # folder under out_dir; default: the dataset
    chat: bool = False
    sampling: SamplingParams = dataclasses.field(default_factory=SamplingParams)
    concurrency: int = 8
    keep_only_correct: bool = False
    new_run: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    empty_completion_retries: int = 2
    max_consecutive_failures: int = 25
    limit: int | None = None  # ask for at most this many examples in this invocation
    write_layout: bool = True
    allow_missing: bool = False  # write the layout with "" for examples that have no completion
    base_url: str | None = None  # recorded only (the same model may move to another server)
    progress: bool = True
    allow_non_sampling: bool = False  # go on (with a warning) when the server does not sample

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")

    @property
    def paths(self) -> RunPaths:
        return RunPaths(os.path.join(self.out_dir, self.name or self.dataset), self.split)


@dataclasses.dataclass
class GenerationReport:
    """Where a split stands after a run (counts over all records, not just this invocation)."""

    dataset: str
    split: str
    teacher_model: str
    prompt_hash: str
    num_examples: int = 0
    completed: int = 0  # examples with a completion (parseable or not)
    missing: int = 0  # examples still without one (failed requests, limit, interruption)
    generated_this_run: int = 0
    request_failures_this_run: int = 0
    last_request_failure: str | None = None  # how the last failed request of this run failed
    parse_failures: int = 0
    parse_failure_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    labelled: int = 0  # completed examples with a human label
    teacher_correct: int = 0
    teacher_accuracy: float | None = None
    filtered_out: int = 0  # keep_only_correct: written as "" because the label disagrees
    written_with_rationale: int = 0
    samples_per_example: int = 1
    majority_agreement: float | None = None  # mean share of samples agreeing with the majority
    identical_samples: int = 0  # n > 1: examples whose samples are all the same text
    temperature: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    elapsed_s: float = 0.0
    layout_files: list[str] = dataclasses.field(default_factory=list)
    interrupted: bool = False

    def summary(self) -> str:
        accuracy = "n/a" if self.teacher_accuracy is None else f"{self.teacher_accuracy:.1%}"
        lines = [
            f"teacher run {self.dataset}/{self.split} with {self.teacher_model}: "
            f"{self.completed}/{self.num_examples} examples done "
            f"({self.generated_this_run} now, {self.missing} missing)",
            f"  teacher accuracy {accuracy} ({self.teacher_correct}/{self.labelled} labelled); "
            f"parse failures {self.parse_failures} {self.parse_failure_reasons or ''}".rstrip(),
            f"  tokens: {self.prompt_tokens} prompt + {self.completion_tokens} completion in "
            f"{self.requests} requests; request failures this run: "
            f"{self.request_failures_this_run}",
        ]
        if self.request_failures_this_run and self.last_request_failure:
            lines.append(f"  last request failure: {self.last_request_failure}")
        if self.samples_per_example > 1 and self.majority_agreement is not None:
            lines.append(
                f"  self-consistency: {self.samples_per_example} samples, "
                f"{self.majority_agreement:.1%} agree with the majority on average"
            )
        if self.samples_per_example > 1 and self.temperature > 0 and self.identical_samples:
            lines.append(
                f"  WARNING: {self.identical_samples}/{self.completed} examples got "
                f"{self.samples_per_example} identical samples at temperature "
                f"{self.temperature}: the server may ignore temperature, and the vote then "
                "counts one completion several times"
            )
        if self.filtered_out:
            lines.append(f"  filtered out (teacher label != human label): {self.filtered_out}")
        if self.layout_files:
            folder = os.path.dirname(self.layout_files[0])
            lines.append(f"  wrote {len(self.layout_files)} file(s) to {folder}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- pure helpers


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def normalize_completion(text: str, stop: Sequence[str], *, chat: bool) -> str:
    """The text written to the CoT files: leading whitespace dropped (the prompt ends in 'A:'),
    a chat model's leading 'A:' dropped, and everything from the first stop sequence on cut (a
    server that ignores `stop` would otherwise leave the next few-shot question in)."""
    text = text.lstrip()
    if chat and text.startswith("A:"):
        text = text[2:].lstrip()
    for sequence in stop:
        position = text.find(sequence)
        if position >= 0:
            text = text[:position]
    return text.rstrip()


def inputs_fingerprint(examples: Sequence[ExampleLike]) -> str:
    """sha256 over (id, input, label) in order: the CoT files pair completions with examples by
    position, so a different order or content is a different run."""
    digest = hashlib.sha256()
    for example in examples:
        for part in (example.id, example.input, example.label):
            digest.update(part.encode("utf-8"))
            digest.update(b"\x00")
        digest.update(b"\x01")
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class SampleParse:
    rationale: str | None
    label: str | None
    parse_error: str | None


def parse_sample(dataset: str, completion: str) -> SampleParse:
    if not completion.strip():
        return SampleParse(None, None, "empty completion")
    try:
        parsed = parse_completion(dataset, completion)
    except UnparseableCompletion as error:
        return SampleParse(None, None, error.reason)
    return SampleParse(parsed.rationale, parsed.label, None)


@dataclasses.dataclass(frozen=True)
class Vote:
    chosen: int  # index of the sample whose completion is kept
    votes: dict[str, int]  # label (first spelling seen) -> samples that agree with it
    agreement: float  # share of all samples agreeing with the chosen label (0 if none parse)


def majority_vote(dataset: str, samples: Sequence[SampleParse]) -> Vote:
    """Self-consistency: group parsed labels by meaning (equation value for SVAMP, number for
    GSM8K-style sets, text otherwise, as the data side's labels_match), pick the largest group
    (ties: the group seen first) and keep its first sample, whose rationale agrees with it.
    When nothing parses, the first sample is kept (and is a parse failure)."""
    groups: list[tuple[str, list[int]]] = []
    for index, sample in enumerate(samples):
        if sample.label is None:
            continue
        for representative, members in groups:
            if sample.label == representative or labels_match(
                dataset, sample.label, representative
            ):
                members.append(index)
                break
        else:
            groups.append((sample.label, [index]))
    if not groups:
        return Vote(chosen=0, votes={}, agreement=0.0)
    best_label, best_members = max(groups, key=lambda group: len(group[1]))  # first max wins
    return Vote(
        chosen=best_members[0],
        votes={label: len(members) for label, members in groups},
        agreement=len(best_members) / len(samples),
    )


def human_label_matches(dataset: str, teacher_label: str | None, human_label: str) -> bool | None:
    """None when the example has no human label (unlabelled data); else labels_match."""
    if not human_label.strip():
        return None
    return labels_match(dataset, teacher_label, human_label)


# ---------------------------------------------------------------------------- manifest


def build_manifest(
    config: GenerationConfig, prompt_set: PromptSet, examples: Sequence[ExampleLike]
) -> dict[str, Any]:
    return {
        "format": RECORD_FORMAT,
        "dataset": config.dataset,
        "split": config.split,
        "teacher": {"model": config.model, "chat": config.chat},
        "prompt_set": {
            "name": prompt_set.name,
            "hash": prompt_set.fingerprint(),
            "shots": len(prompt_set.exemplars),
            "source": prompt_set.source,
        },
        "sampling": config.sampling.to_json(),
        "inputs": {"count": len(examples), "fingerprint": inputs_fingerprint(examples)},
        "created": utc_now(),
        "base_url": config.base_url,
    }


# ---------------------------------------------------------------------------- one example


@dataclasses.dataclass(frozen=True)
class _Outcome:
    index: int
    record: dict[str, Any]
    fatal: BaseException | None = None


def provenance(config: GenerationConfig, prompt_set: PromptSet) -> dict[str, Any]:
    """What every record repeats about how it was made (also in the manifest)."""
    return {
        "teacher_model": config.model,
        "prompt_set": prompt_set.name,
        "prompt_hash": prompt_set.fingerprint(),
        "chat": config.chat,
        "sampling": config.sampling.to_json(),
    }


def _example_record(
    config: GenerationConfig,
    prompt_set: PromptSet,
    made_by: dict[str, Any],
    backend: CompletionBackend,
    index: int,
    example: ExampleLike,
) -> _Outcome:
    """Ask for one example's samples and turn them into a record ('ok' or 'error')."""
    started = time.monotonic()
    base = {"v": RECORD_FORMAT, "index": index, "id": example.id, **made_by}
    try:
        prompt = render_prompt(prompt_set, example.input, chat=config.chat)
    except ValueError as error:
        raise ValueError(f"example {index} (id {example.id!r}): {error}") from error
    usage_prompt = usage_completion = requests = attempts = 0
    result: CompletionResult | None = None
    try:
        for _ in range(config.empty_completion_retries + 1):
            result = backend.complete(prompt, config.sampling)
            usage_prompt += result.usage.prompt_tokens
            usage_completion += result.usage.completion_tokens
            requests += result.requests
            attempts += result.attempts
            if all(text.strip() for text in result.texts):
                break
    except NonRetryableRequestError as error:
        record = {
            **base,
            "status": "error",
            "error": str(error),
            "http_status": error.status,
            "time": utc_now(),
        }
        return _Outcome(index, record, fatal=error if error.fatal else None)
    except RetriesExhaustedError as error:
        record = {
            **base,
            "status": "error",
            "error": str(error),
            "attempts": error.attempts,
            "time": utc_now(),
        }
        return _Outcome(index, record)
    assert result is not None
    stop = config.sampling.stop
    completions = [normalize_completion(t, stop, chat=config.chat) for t in result.texts]
    samples = [parse_sample(config.dataset, text) for text in completions]
    vote = majority_vote(config.dataset, samples)
    chosen = samples[vote.chosen]
    record = {
        **base,
        "status": "ok",
        "completion": completions[vote.chosen],
        "rationale": chosen.rationale,
        "llm_label": chosen.label,
        "parse_error": chosen.parse_error,
        "human_label": example.label,
        "correct": human_label_matches(config.dataset, chosen.label, example.label),
        "chosen_sample": vote.chosen,
        "votes": vote.votes,
        "agreement": vote.agreement,
        "samples": [dataclasses.asdict(s) for s in samples],
        "completions": completions,
        "raw_completions": list(result.texts),
        "finish_reasons": list(result.finish_reasons),
        "served_model": result.served_model,
        "usage": {"prompt_tokens": usage_prompt, "completion_tokens": usage_completion},
        "requests": requests,
        "attempts": attempts,
        "latency_s": round(time.monotonic() - started, 3),
        "time": utc_now(),
    }
    return _Outcome(index, record)


# ---------------------------------------------------------------------------- the run


def generate(
    config: GenerationConfig,
    examples: Sequence[ExampleLike],
    prompt_set: PromptSet,
    backend: CompletionBackend,
    *,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> GenerationReport:
    """Run (or resume) the split with `backend` (an OpenAICompatibleClient); returns the report,
    also written to report.json.

    KeyboardInterrupt stops asking, keeps every finished record and is re-raised after the
    report is written (rerun to continue)."""
    if prompt_set.dataset != config.dataset:
        raise ValueError(
            f"prompt set {prompt_set.name!r} is for {prompt_set.dataset!r}, not {config.dataset!r}"
        )
    paths = config.paths
    manifest = build_manifest(config, prompt_set, examples)
    started = time.monotonic()
    with run_lock(paths):
        prepare_run_dir(paths, manifest, new_run=config.new_run, log=log)
        records = read_records(paths.records, repair=True)
        done = final_records(records, [e.id for e in examples], paths.records)
        todo = [i for i in range(len(examples)) if i not in done]
        if config.limit is not None:
            todo = todo[: config.limit]
        if done:
            log(f"resuming: {len(done)}/{len(examples)} examples already have a completion")
        stats = _RunStats()
        interrupted = False
        if todo:
            check_sampling(config, prompt_set, backend, [examples[i] for i in todo], log=log)
        try:
            _ask_teacher(config, prompt_set, backend, examples, todo, done, paths, stats)
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted: finished examples are saved; rerun the same command to continue")
        report = _build_report(config, prompt_set, examples, done, stats, started)
        report.interrupted = interrupted
        if interrupted:
            write_json_atomic(paths.report, dataclasses.asdict(report))
            raise KeyboardInterrupt
        if config.write_layout and (report.missing == 0 or config.allow_missing):
            report.layout_files = write_paper_layout(config, examples, done)
        elif config.write_layout and stats.fatal is None:
            log(
                f"{report.missing} examples have no completion yet: the {paths.llm_dir} files "
                "are written once all are done (rerun to retry them, or --allow_missing)"
            )
        write_json_atomic(paths.report, dataclasses.asdict(report))
    if stats.fatal is not None:
        raise TeacherUnavailableError(str(stats.fatal)) from stats.fatal
    return report


@dataclasses.dataclass
class _RunStats:
    generated: int = 0
    failures: int = 0
    last_failure: str | None = None
    fatal: BaseException | None = None


def _ask_teacher(
    config: GenerationConfig,
    prompt_set: PromptSet,
    backend: CompletionBackend,
    examples: Sequence[ExampleLike],
    todo: Sequence[int],
    done: dict[int, dict[str, Any]],
    paths: RunPaths,
    stats: _RunStats,
) -> None:
    """Workers (daemon threads, so an interrupt never waits on a hung request) ask the teacher;
    this thread alone appends records, flushing each one."""
    if not todo:
        return
    tasks: queue.Queue[int] = queue.Queue()
    for index in todo:
        tasks.put(index)
    results: queue.Queue[_Outcome] = queue.Queue()
    stop = threading.Event()
    made_by = provenance(config, prompt_set)

    def worker() -> None:
        while not stop.is_set():
            try:
                index = tasks.get_nowait()
            except queue.Empty:
                return
            try:
                outcome = _example_record(
                    config, prompt_set, made_by, backend, index, examples[index]
                )
            except BaseException as error:  # a bug: hand it to the writer, which re-raises
                outcome = _Outcome(index, {}, fatal=error)
            if outcome.fatal is not None:
                stop.set()  # no point asking for more: every request would fail the same way
            results.put(outcome)

    threads = [
        threading.Thread(target=worker, name=f"teacher-{n}", daemon=True)
        for n in range(min(config.concurrency, len(todo)))
    ]
    for thread in threads:
        thread.start()
    bar = _progress_bar(config, total=len(examples), initial=len(done))
    consecutive_failures = 0
    received = 0
    try:
        with open(paths.records, "a", encoding="utf-8") as out:
            while received < len(todo):
                try:
                    outcome = results.get(timeout=0.2)
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and results.empty():
                        break  # workers stopped after a fatal error
                    continue
                received += 1
                if outcome.record:
                    out.write(json.dumps(outcome.record, ensure_ascii=False) + "\n")
                    out.flush()
                if outcome.fatal is not None and not outcome.record:
                    raise outcome.fatal  # programming error inside a worker
                if outcome.record.get("status") == "ok":
                    done[outcome.index] = outcome.record
                    stats.generated += 1
                    consecutive_failures = 0
                    if bar is not None:
                        bar.update(1)
                else:
                    stats.failures += 1
                    stats.last_failure = outcome.record.get("error")
                    consecutive_failures += 1
                    if bar is not None:
                        bar.set_postfix(failures=stats.failures, refresh=False)
                if outcome.fatal is not None:
                    stats.fatal = outcome.fatal
                    break
                if consecutive_failures >= config.max_consecutive_failures:
                    stats.fatal = TeacherUnavailableError(
                        f"{consecutive_failures} examples failed in a row; last error: "
                        f"{outcome.record.get('error')}"
                    )
                    break
            out.flush()
            os.fsync(out.fileno())
    finally:
        stop.set()
        if bar is not None:
            bar.close()


def _progress_bar(config: GenerationConfig, *, total: int, initial: int) -> Any:
    if not config.progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="ex",
        desc=f"teacher {config.dataset}/{config.split}",
        dynamic_ncols=True,
        smoothing=0.1,
        postfix={"failures": 0},
    )


def _build_report(
    config: GenerationConfig,
    prompt_set: PromptSet,
    examples: Sequence[ExampleLike],
    done: dict[int, dict[str, Any]],
    stats: _RunStats,
    started: float,
) -> GenerationReport:
    report = GenerationReport(
        dataset=config.dataset,
        split=config.split,
        teacher_model=config.model,
        prompt_hash=prompt_set.fingerprint(),
        num_examples=len(examples),
        completed=len(done),
        missing=len(examples) - len(done),
        generated_this_run=stats.generated,
        request_failures_this_run=stats.failures,
        last_request_failure=stats.last_failure,
        samples_per_example=config.sampling.n,
        temperature=config.sampling.temperature,
    )
    reasons: collections.Counter[str] = collections.Counter()
    agreements = []
    for record in done.values():
        if record.get("parse_error") is not None:
            reasons[record["parse_error"]] += 1
        if record.get("correct") is not None:
            report.labelled += 1
            report.teacher_correct += bool(record["correct"])
        if _kept(config, record):
            report.written_with_rationale += record.get("parse_error") is None
        elif record.get("parse_error") is None:
            report.filtered_out += 1
        usage = record.get("usage") or {}
        report.prompt_tokens += int(usage.get("prompt_tokens", 0))
        report.completion_tokens += int(usage.get("completion_tokens", 0))
        report.requests += int(record.get("requests", 0))
        if record.get("agreement") is not None:
            agreements.append(float(record["agreement"]))
        completions = record.get("raw_completions") or []
        report.identical_samples += len(completions) > 1 and len(set(completions)) == 1
    report.parse_failures = sum(reasons.values())
    report.parse_failure_reasons = dict(reasons.most_common())
    if report.labelled:
        report.teacher_accuracy = report.teacher_correct / report.labelled
    if agreements:
        report.majority_agreement = sum(agreements) / len(agreements)
    report.elapsed_s = round(time.monotonic() - started, 3)
    return report


def check_sampling(
    config: GenerationConfig,
    prompt_set: PromptSet,
    backend: CompletionBackend,
    examples: Sequence[ExampleLike],
    *,
    log: Callable[[str], None],
) -> None:
    """With n > 1 at temperature > 0, asks for the first SAMPLING_PROBES examples and raises
    TeacherDoesNotSampleError when every one comes back as n identical texts (one can, by
    chance; all of them means the server ignores temperature). Fewer choices than `n` per
    request is reported with it. `allow_non_sampling` turns the refusal into a warning."""
    sampling = config.sampling
    if sampling.n < 2 or sampling.temperature <= 0 or not examples:
        return
    probes = examples[:SAMPLING_PROBES]
    identical = short = 0
    for example in probes:
        try:
            result = backend.complete(
                render_prompt(prompt_set, example.input, chat=config.chat), sampling
            )
        except (NonRetryableRequestError, RetriesExhaustedError):
            return  # the run itself reports request failures
        identical += len(set(result.texts)) == 1
        short += result.short_responses > 0
    if identical < len(probes):
        return
    problem = (
        f"the server does not sample: {identical}/{len(probes)} probe examples got "
        f"{sampling.n} identical samples at temperature {sampling.temperature}"
        + (f", and it answered with fewer choices than n={sampling.n}" if short else "")
        + "; self-consistency would vote over copies of one completion"
    )
    if not config.allow_non_sampling:
        raise TeacherDoesNotSampleError(
            f"{problem}. Serve the teacher with a server that samples (vLLM, SGLang, TGI, "
            "llama.cpp), use --n_samples=1, or --allow_non_sampling to go on anyway"
        )
    log(f"WARNING: {problem} (going on: --allow_non_sampling)")


def _kept(config: GenerationConfig, record: dict[str, Any]) -> bool:
    """keep_only_correct drops completions whose teacher label disagrees with the human label
    (unlabelled examples, correct=None, are kept)."""
    return not (config.keep_only_correct and record.get("correct") is False)


def cot_entries(
    config: GenerationConfig, examples: Sequence[ExampleLike], done: dict[int, dict[str, Any]]
) -> list[str]:
    """One completion per example, in example order: "" for a filtered or missing one (the
    reader then reports it unparseable and, with drop_unparseable, leaves it out)."""
    entries = []
    for index in range(len(examples)):
        record = done.get(index)
        if record is None:
            if not config.allow_missing:
                raise IncompleteRunError(
                    f"example {index} ({examples[index].id}) has no completion; rerun to "
                    "retry it, or allow_missing"
                )
            entries.append("")
        elif not _kept(config, record):
            entries.append("")
        else:
            entries.append(record["completion"])
    return entries


def write_paper_layout(
    config: GenerationConfig, examples: Sequence[ExampleLike], done: dict[int, dict[str, Any]]
) -> list[str]:
    """The authors' {split}_CoT_{i}.json files for this run (see cot_entries)."""
    return write_cot_files(config.paths, cot_entries(config, examples, done), config.chunk_size)


def export_layout(
    config: GenerationConfig, examples: Sequence[ExampleLike], prompt_set: PromptSet
) -> list[str]:
    """Write the paper layout from an existing run's records without asking the teacher (the
    'on demand' export, e.g. with allow_missing or after changing keep_only_correct)."""
    paths = config.paths
    with run_lock(paths):
        old = load_manifest(paths)
        if old is None:
            raise RunMismatchError(f"no run manifest at {paths.manifest}; nothing to export")
        differences = manifest_differences(old, build_manifest(config, prompt_set, examples))
        if differences:
            raise RunMismatchError(
                f"{paths.manifest} belongs to a different run:\n  " + "\n  ".join(differences)
            )
        ids = [e.id for e in examples]
        done = final_records(read_records(paths.records), ids, paths.records)
        return write_paper_layout(config, examples, done)
