"""Packing efficiency (non-pad fraction of the batch) on real data, packed vs unpacked.

Reads the paper-layout folder through the project's own loader and tokenises with a
SentencePiece model, then runs the training iterator for one epoch each way and reports the
share of real tokens in the encoder and decoder rows and the examples each batch carries.

  python benchmarks/packing_efficiency.py --data_dir ../shared/data --dataset cqa \\
      --vocabulary ../shared/bench/cqa_spm.model --max_input_length 1024 --max_target_length 256
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from sbsd_jax.data.examples import DatasetSpec, DataSpec
from sbsd_jax.data.features import BatchingSpec
from sbsd_jax.data.pipeline import make_train_iterator, prepare_data


def epoch_statistics(batching: BatchingSpec, prepared) -> dict[str, float]:
    """Iterate until one epoch of examples has been consumed; token-weighted non-pad shares."""
    iterator = make_train_iterator(prepared, batching, process_index=0, process_count=1)
    real_in = real_tgt = total_in = total_tgt = 0
    batches = 0
    examples = iterator.examples_per_epoch
    while True:
        state = iterator.get_state()
        if state["epoch"] * examples + state["position"] >= examples:
            break
        batch = next(iterator)
        real_in += int((batch["encoder_segment_ids"] > 0).sum())
        real_tgt += int((batch["decoder_segment_ids"] > 0).sum())
        total_in += batch["encoder_segment_ids"].size
        total_tgt += batch["decoder_segment_ids"].size
        batches += 1
    return {
        "encoder_nonpad": real_in / total_in,
        "decoder_nonpad": real_tgt / total_tgt,
        "batches_per_epoch": batches,
        "examples_per_batch": examples / batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data")
    parser.add_argument("--dataset", default="cqa")
    parser.add_argument("--vocabulary", default="../shared/bench/cqa_spm.model")
    parser.add_argument("--method", default="step_by_step")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_input_length", type=int, default=1024)
    parser.add_argument("--max_target_length", type=int, default=256)
    args = parser.parse_args()

    dataset = DatasetSpec(
        dataset=args.dataset, source="paper", data_dir=args.data_dir, label_type="gt"
    )
    data = DataSpec(
        dataset, args.method, args.vocabulary, args.max_input_length, args.max_target_length
    )
    batching = BatchingSpec(
        batch_size=args.batch_size,
        max_input_length=args.max_input_length,
        max_target_length=args.max_target_length,
        pack=False,
        seed=0,
        row_length=0,
    )
    start = time.perf_counter()
    prepared = prepare_data(data)
    seconds = time.perf_counter() - start
    train = prepared.train_set
    print(f"loaded+tokenised {train.num_examples} train examples in {seconds:.1f} s")
    for kind, inputs, targets in zip(train.kinds, train.inputs, train.targets, strict=True):
        present = targets.lengths > 0
        print(
            f"  {kind:<8} mean input {inputs.lengths[present].mean():6.1f} tokens "
            f"(max {inputs.lengths.max()}), mean target {targets.lengths[present].mean():6.1f} "
            f"(max {targets.lengths.max()}); at max length: inputs "
            f"{int((inputs.lengths >= args.max_input_length).sum())}, targets "
            f"{int((targets.lengths >= args.max_target_length).sum())}"
        )
    rows = args.batch_size * len(train.kinds)
    print(
        f"{args.dataset} {args.method} rows/batch={rows} lengths="
        f"{args.max_input_length}/{args.max_target_length}"
    )
    for pack in (False, True):
        start = time.perf_counter()
        stats = epoch_statistics(dataclasses.replace(batching, pack=pack), prepared)
        per_batch_ms = 1e3 * (time.perf_counter() - start) / stats["batches_per_epoch"]
        print(
            f"pack={str(pack):<5} encoder_nonpad={stats['encoder_nonpad']:.4f} "
            f"decoder_nonpad={stats['decoder_nonpad']:.4f} "
            f"examples_per_batch={stats['examples_per_batch']:.1f} "
            f"batches_per_epoch={stats['batches_per_epoch']} host_ms_per_batch={per_batch_ms:.1f}"
        )


if __name__ == "__main__":
    main()
