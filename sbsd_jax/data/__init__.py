"""Sources, teacher-output parsers, SeqIO tasks and the input pipeline."""
