"""Mean reply length in whitespace-separated words (local module)."""

from anima.evaluation.metric_base import ReplyMetric


class ReplyLength(ReplyMetric):
    DESCRIPTION = """Mean number of whitespace-separated words per reply (0 for no replies); also the median."""
    INPUTS = """
Args:
    predictions: list of generated replies (str).
Returns:
    reply_length: mean words per reply; reply_length_median: median words per reply.
"""

    def _compute(self, predictions):
        lengths = sorted(len(t.split()) for t in predictions)
        if not lengths:
            return {"reply_length": 0.0, "reply_length_median": 0.0}
        mid = len(lengths) // 2
        median = lengths[mid] if len(lengths) % 2 else (lengths[mid - 1] + lengths[mid]) / 2
        return {"reply_length": sum(lengths) / len(lengths), "reply_length_median": float(median)}
