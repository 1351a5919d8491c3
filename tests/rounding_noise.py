"""The yardstick of "trains the same" tests: how far float32 rounding alone moves a run, here.

Two mathematically equal training runs (one device and a mesh, a full batch and accumulated
micro-batches, scanned and unscanned layers) add their floats in different orders. A few Adam
or Adafactor steps then amplify those last-bit differences, most for weights whose gradient is
near zero, where the normalised update g / (sqrt(v) + eps) is steepest; by how much depends on
the CPU's kernels (blocking and vector width), so a fixed tolerance tuned on one host fails on
another (rtol 1e-4 / atol 2e-5 held on AMD Zen 4 and failed on an Intel Xeon: one element of
a 4,096-element parameter off by 5.4e-5).

So each test measures the noise on the host it runs on: it trains its reference program again
on the same batches with the rows in other orders. That is the same mathematics with another
summation order, and no sharding, accumulation or scan. "The same" then means: within
ROUNDING_MARGIN times that noise. Measured on AMD Zen 4 (2026-12-02): the 2x2x2 mesh run is 2
to 6 times as far from the one-device run as a reordered one-device run is (largest element
2.0e-5 against 3.2e-6 to 1.0e-5 for six orders), while a real sharding bug is 2,700 times as
far (a row lost in the batch split, or one parameter's gradient summed over one data shard
only: an element off by 1.8e-2 against 6.6e-6). A margin of 16 sits between them with room on
both sides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

ROUNDING_MARGIN = 16.0
NUM_ORDERS = 3  # row orders measured; the noise is the largest distance among them

Batch = Mapping[str, np.ndarray]
Metrics = Mapping[str, Any]
# A finished run: (parameters, the metrics of every step).
Run = tuple[Any, Sequence[Metrics]]


def reorder_rows(seed: int) -> Callable[[Batch], Batch]:
    """The same batch with its rows in another (seeded) order: equal losses and gradients."""

    def reorder(batch: Batch) -> Batch:
        rows = len(next(iter(batch.values())))
        order = np.random.default_rng(seed).permutation(rows)
        return {key: np.asarray(value)[order] for key, value in batch.items()}

    return reorder


def max_abs_difference(a: Any, b: Any) -> float:
    """The largest |a - b| over every element of two pytrees of the same structure."""
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _largest_abs(tree: Any) -> float:
    return max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class RoundingNoise:
    """The largest distance, over NUM_ORDERS row orders, between a reordered and the plain
    run: of any parameter element, and of each metric at any step."""

    params: float
    metrics: Mapping[str, float]

    @classmethod
    def measure(
        cls, train: Callable[[Callable[[Batch], Batch]], Run], reference: Run | None = None
    ) -> RoundingNoise:
        """`train(batch_transform)` runs the reference program on transformed batches."""
        params, history = reference if reference is not None else train(lambda batch: batch)
        runs = [train(reorder_rows(seed)) for seed in range(NUM_ORDERS)]
        names = [
            name
            for name in history[0]
            if np.issubdtype(np.asarray(history[0][name]).dtype, np.floating)
        ]
        return cls(
            params=max(max_abs_difference(p, params) for p, _ in runs),
            metrics={
                name: max(
                    abs(float(m[name]) - float(ref[name]))
                    for _, h in runs
                    for m, ref in zip(h, history, strict=True)
                )
                for name in names
            },
        )

    def params_tolerance(self, params: Any) -> float:
        """ROUNDING_MARGIN x the noise, and at least that many float32 ulps of the largest
        weight (a host whose reordering moved nothing still gets a rounding-sized bound)."""
        ulp = float(np.spacing(np.float32(_largest_abs(params))))
        return ROUNDING_MARGIN * max(self.params, ulp)

    def metric_tolerance(self, name: str, history: Sequence[Metrics]) -> float:
        largest = max(abs(float(m[name])) for m in history)
        return ROUNDING_MARGIN * max(self.metrics[name], float(np.spacing(np.float32(largest))))

    def assert_same_params(self, actual: Any, expected: Any) -> None:
        tolerance = self.params_tolerance(expected)
        message = f"beyond {ROUNDING_MARGIN:g} x the rounding noise {self.params:.2e} (atol)"
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(
                np.asarray(a), np.asarray(b), rtol=0, atol=tolerance, err_msg=message
            ),
            actual,
            expected,
        )

    def assert_same_metrics(
        self, actual: Sequence[Metrics], expected: Sequence[Metrics], names: Sequence[str]
    ) -> None:
        for name in names:
            tolerance = self.metric_tolerance(name, expected)
            np.testing.assert_allclose(
                [float(m[name]) for m in actual],
                [float(m[name]) for m in expected],
                rtol=0,
                atol=tolerance,
                err_msg=f"{name}: beyond {ROUNDING_MARGIN:g} x its rounding noise "
                f"{self.metrics[name]:.2e}",
            )
