"""Rationale extraction: few-shot chain-of-thought prompting of a teacher LLM."""
