"""Seeded train subsampling and train/valid carving, identical to the reference's `datasets` calls.

The reference uses `Dataset.train_test_split(test_size=..., seed=...)` twice: to subsample train
(`test_size=1 - fraction, seed=run`, keep 'train') and to carve valid out of train for CQA/SVAMP
(`test_size=0.1, seed=0`). That call draws `np.random.default_rng(seed).permutation(n)`, takes
the first ceil(test_size * n) as test and the rest, in permutation order, as train. These
functions reproduce the same indices without `datasets`, so the selection depends only on the
number of examples, their order and the seed: every method sees the same subset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def reference_train_test_indices(
    num_examples: int, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train_indices, test_indices) exactly as `datasets` train_test_split(test_size, seed)."""
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    num_test = math.ceil(test_size * num_examples)
    num_train = num_examples - num_test
    if num_train <= 0 or num_test <= 0:
        raise ValueError(
            f"cannot split {num_examples} examples with test_size={test_size}: "
            f"{num_train} train / {num_test} test"
        )
    permutation = np.random.default_rng(seed).permutation(num_examples)
    return permutation[num_test : num_test + num_train], permutation[:num_test]


def subsample_indices(num_examples: int, fraction: float, seed: int) -> np.ndarray:
    """Indices of the kept training examples for the paper's fraction sweep (1.0 keeps all, in
    order, as the reference does when --subsample is 1.0)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.arange(num_examples)
    kept, _ = reference_train_test_indices(num_examples, 1.0 - fraction, seed)
    return kept


def subsample(examples: Sequence[T], fraction: float, seed: int) -> list[T]:
    """The kept examples (see subsample_indices)."""
    return [examples[int(i)] for i in subsample_indices(len(examples), fraction, seed)]


def split_off_valid(
    examples: Sequence[T], valid_fraction: float = 0.1, seed: int = 0
) -> tuple[list[T], list[T]]:
    """(train, valid) as the reference's train_test_split(test_size=0.1, seed=0)."""
    train_indices, valid_indices = reference_train_test_indices(len(examples), valid_fraction, seed)
    return [examples[int(i)] for i in train_indices], [examples[int(i)] for i in valid_indices]
