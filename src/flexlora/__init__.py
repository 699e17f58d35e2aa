"""flexlora: federated fine-tuning of LLMs with heterogeneous LoRA ranks."""

import logging

__version__ = "0.1.0"

# Library code logs; the CLI decides what is shown.
logging.getLogger(__name__).addHandler(logging.NullHandler())
