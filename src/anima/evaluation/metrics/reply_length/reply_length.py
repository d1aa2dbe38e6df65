"""Mean reply length in whitespace-separated words (local module)."""

import datasets
import evaluate

_CITATION = ""

_DESCRIPTION = """Mean number of whitespace-separated words per reply (0 for no replies); also the median."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated replies (str).
Returns:
    reply_length: mean words per reply; reply_length_median: median words per reply.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ReplyLength(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions):
        lengths = sorted(len(t.split()) for t in predictions)
        if not lengths:
            return {"reply_length": 0.0, "reply_length_median": 0.0}
        mid = len(lengths) // 2
        median = lengths[mid] if len(lengths) % 2 else (lengths[mid - 1] + lengths[mid]) / 2
        return {"reply_length": sum(lengths) / len(lengths), "reply_length_median": float(median)}
