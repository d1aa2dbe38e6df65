"""Evaluation: perplexity, generation metrics (local `evaluate` modules under metrics/), comparisons."""
