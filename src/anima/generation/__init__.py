"""Fast batch-1 decoding for chat and serving: sampling, streaming detokenization, decode backends."""

from anima.generation.sampling import SamplingParams

__all__ = ["SamplingParams", "ChatEngine", "Completion"]


def __getattr__(name: str):
    # engine imports torch/transformers lazily; keep `import anima.generation` cheap.
    if name in ("ChatEngine", "Completion"):
        from anima.generation import engine

        return getattr(engine, name)
    raise AttributeError(name)
