"""Dataset sources: each reads one on-disk (or hub) layout into `Example`s.

- flexlora_ni: the FlexLoRA authors' NI client split (clients come from file names).
- ni_tasks: raw Super-NaturalInstructions task files (a client per task).
- records: flat records (Dolly-15k, Alpaca-style JSON / JSONL, Hugging Face datasets),
  partitioned into clients afterwards.
"""
