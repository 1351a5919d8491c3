"""Rationale extraction: few-shot chain-of-thought prompting of a teacher LLM.

`python -m sbsd_jax.teacher --help` for the command line; the pieces:
  prompt_sets  exemplar files and prompt rendering (prompts/*.json)
  client       OpenAI-compatible HTTP client with retries (stdlib only)
  generation   the resumable run that writes the paper layout {name}/llm/{split}_CoT_{i}.json
  run_store    its files: records, manifest, lock, CoT lists
"""

from sbsd_jax.teacher.client import (
    ClientConfig,
    NonRetryableRequestError,
    OpenAICompatibleClient,
    RetriesExhaustedError,
    RetryPolicy,
    SamplingParams,
)
from sbsd_jax.teacher.generation import (
    GenerationConfig,
    GenerationReport,
    export_layout,
    generate,
)
from sbsd_jax.teacher.prompt_sets import PromptSet, PromptSetError, load_prompt_set
from sbsd_jax.teacher.run_store import RunMismatchError

__all__ = [
    "ClientConfig",
    "GenerationConfig",
    "GenerationReport",
    "NonRetryableRequestError",
    "OpenAICompatibleClient",
    "PromptSet",
    "PromptSetError",
    "RetriesExhaustedError",
    "RetryPolicy",
    "RunMismatchError",
    "SamplingParams",
    "export_layout",
    "generate",
    "load_prompt_set",
]
