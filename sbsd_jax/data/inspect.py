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

from sbsd_jax.data.examples import KNOWN_DATASETS, SOURCE_KINDS, DatasetSpec, Example
from sbsd_jax.data.sources import load_dataset_splits


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sbsd_jax.data.inspect",
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


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
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
    if args.json:
        print(json.dumps(loaded.report.to_dict(), indent=2))
        return 0
    print(loaded.report.format())
    for split, examples in loaded.splits.items():
        for example in examples[: args.show]:
            print(f"\n[{split}]\n{_describe(example)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
