"""Label conventions shared by every loss and batch builder: which positions carry no loss.

Its own module so the losses, the fused LM-head loss and the chat batches agree without importing each other.
"""

from __future__ import annotations

IGNORE_INDEX = -100  # the label of a position that is not trained on (prompt tokens, padding)
NO_TARGETS = ("a training batch has no target tokens (assistant mask all zeros); "
              "check the chat template and max_seq_len truncation")
