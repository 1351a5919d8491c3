"""Print what a dataset spec loads: per-split counts, teacher parse failures, teacher accuracy,
and a few examples. Run before training to check a data folder:

  python -m sbsd_jax.data.inspect --data_dir=/work/shared/data --dataset=cqa
  python -m sbsd_jax.data.inspect --dataset=synthetic --source=synthetic --data_dir=/tmp/syn
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from sbsd_jax.data.examples import (
    KNOWN_DATASETS,
    SOURCE_KINDS,
    DataFormatError,
    DatasetSpec,
    Example,
    UnknownDatasetError,
)
from sbsd_jax.data.features import METHOD_TASKS
from sbsd_jax.data.sources import LoadedDataset, load_dataset_splits
from sbsd_jax.data.truncation import (
    Encode,
    LengthLimits,
    byte_encode,
    count_truncations,
    report_truncations,
    vocabulary_name,
)

PROGRAM = "python -m sbsd_jax.data.inspect"
EXIT_BAD_INPUT = 1


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, choices=KNOWN_DATASETS)
    parser.add_argument("--source", default="paper", choices=SOURCE_KINDS)
    parser.add_argument("--data_dir")
    parser.add_argument("--hf_name")
    parser.add_argument("--hf_config")
    parser.add_argument("--tfds_name")
    parser.add_argument("--rationale_dir")
    parser.add_argument("--rationale_source", default="teacher", choices=("teacher", "human"))
    parser.add_argument("--label_type", default="gt", choices=("gt", "llm"))
    parser.add_argument("--train_fraction", type=float, default=1.0)
    parser.add_argument("--subsample_seed", type=int, default=0)
    parser.add_argument(
        "--keep_unparseable",
        action="store_true",
        help="keep train examples whose teacher output cannot be parsed",
    )
    parser.add_argument(
        "--method",
        default="step_by_step",
        choices=tuple(METHOD_TASKS),
        help="the training method whose task texts the truncation counts measure",
    )
    parser.add_argument(
        "--vocabulary",
        default="byte",
        help="'byte' or a SentencePiece model file: the tokens the length limits count",
    )
    parser.add_argument("--max_input_length", type=int, default=1024)
    parser.add_argument("--max_target_length", type=int, default=256)
    parser.add_argument("--show", type=int, default=2, help="examples to print per split")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def _describe(example: Example) -> str:
    fields = {
        "id": example.id,
        "input": example.input,
        "label": example.label,
        "llm_label": example.llm_label,
        "rationale": example.rationale,
    }
    if example.parse_error:
        fields["parse_error"] = example.parse_error
    return "\n".join(textwrap.indent(f"{k}: {v!r}", "  ") for k, v in fields.items())


def _encoder(spec: str) -> Encode:
    if spec == "byte":
        return byte_encode  # no TensorFlow needed for the default
    from sbsd_jax.data.vocabulary import make_vocabulary

    return make_vocabulary(spec).encode


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        loaded = _load(args)
    except (DataFormatError, UnknownDatasetError) as error:
        print(f"{PROGRAM}: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as error:  # a spec that cannot work (e.g. a bad --vocabulary file)
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(loaded.report.to_dict(), indent=2))
        return 0
    print(loaded.report.format())
    for split, examples in loaded.splits.items():
        for example in examples[: args.show]:
            print(f"\n[{split}]\n{_describe(example)}")
    return 0


def _load(args: argparse.Namespace) -> LoadedDataset:
    """The dataset with its report, truncations counted; DataFormatError on bad files."""
    spec = DatasetSpec(
        dataset=args.dataset,
        source=args.source,
        data_dir=args.data_dir,
        hf_name=args.hf_name,
        hf_config=args.hf_config,
        tfds_name=args.tfds_name,
        rationale_dir=args.rationale_dir,
        rationale_source=args.rationale_source,
        label_type=args.label_type,
        train_fraction=args.train_fraction,
        subsample_seed=args.subsample_seed,
        drop_unparseable=not args.keep_unparseable,
    )
    loaded = load_dataset_splits(spec)
    limits = LengthLimits(args.max_input_length, args.max_target_length)
    counts = count_truncations(
        args.dataset, args.method, loaded.splits, _encoder(args.vocabulary), limits
    )
    report_truncations(loaded.report, counts, limits, vocabulary_name(args.vocabulary))
    return loaded


if __name__ == "__main__":
    sys.exit(main())
