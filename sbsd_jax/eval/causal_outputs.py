"""Greedy outputs of a decoder-only student: the task's prompt, left-padded, then decoded.

The prompt is the one the training sequences start with (data/causal_lm.py: the predict
prompt for step_by_step, the plain question for standard and cot; the explain prompt when
rationales are decoded), so the decoded text is what follows `A:` (or the chat generation
prompt) up to the first EOS; `evaluator.evaluate` then reads the label from it as for T5 (for
cot, the answer after the dataset's cue). Batches have a fixed shape, `batch_size` rows and one
prompt length per split (the longest prompt rounded up to 64, capped at max_prompt_length),
so the decoder compiles once per split and output length. A prompt longer than the cap keeps
its last tokens (the answer cue the student continues from); the data report counts them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from sbsd_jax.data.causal_lm import CausalFormat
from sbsd_jax.data.examples import Example
from sbsd_jax.data.features import METHOD_EVAL_TASK
from sbsd_jax.eval.evaluator import EvaluationInterrupted, OutputsFn, padded_length

# (left-padded int32 prompts [B, P], segment ids [B, P] (0 = pad), output length) -> int32
# [B, output length] tokens, padded after each row's EOS.
CausalGenerateFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def left_padded(prompts: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, segment ids) [N, length]: each prompt's last `length` tokens at the right end."""
    tokens = np.zeros((len(prompts), length), np.int32)
    segments = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
        kept = list(prompt)[-length:]
        tokens[row, length - len(kept) :] = kept
        segments[row, length - len(kept) :] = 1
    return tokens, segments


def causal_outputs(
    fmt: CausalFormat,
    *,
    method: str,
    dataset: str,
    generate: CausalGenerateFn,
    batch_size: int,
    max_prompt_length: int,
) -> OutputsFn:
    """The OutputsFn of a decoder-only student (see the module docstring)."""

    def outputs(
        examples: Sequence[Example],
        rationale: bool,
        max_decode_length: int,
        should_stop: Callable[[], bool] | None,
    ) -> list[str]:
        kind = "explain" if rationale else METHOD_EVAL_TASK[method]
        prompts = fmt.prompt_ids_batch(kind, dataset, examples)
        length = padded_length([len(p) for p in prompts], max_prompt_length)
        texts: list[str] = []
        for start in range(0, len(prompts), batch_size):
            if should_stop is not None and should_stop():
                raise EvaluationInterrupted
            chunk = list(prompts[start : start + batch_size])
            real = len(chunk)
            chunk += [chunk[0]] * (batch_size - real)  # filler rows: a real prompt, dropped
            tokens, segments = left_padded(chunk, length)
            generated = np.asarray(generate(tokens, segments, max_decode_length))
            texts.extend(fmt.decode(generated[i]) for i in range(real))
        return texts

    return outputs
