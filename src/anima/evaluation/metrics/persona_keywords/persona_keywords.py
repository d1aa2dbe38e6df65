"""Persona-keyword rate: fraction of replies mentioning at least one persona keyword (local module)."""

import re
import datasets
import evaluate

_CITATION = ""

_DESCRIPTION = """Fraction of replies that contain at least one of the given keywords, case-insensitive, as a
whole word or phrase (not inside another word: 'bot' does not match 'robot'; inner whitespace of a
phrase matches any whitespace). In [0, 1]; 0 for no replies or no keywords."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated replies (str).
    keywords: list of persona keywords or phrases (str).
Returns:
    persona_keyword_rate: share of replies with a keyword.
"""


def keyword_pattern(keywords):
    parts = [r"\s+".join(re.escape(w) for w in k.split()) for k in keywords if k and k.strip()]
    if not parts:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PersonaKeywords(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, keywords=()):
        pattern = keyword_pattern(list(keywords))
        if pattern is None or not predictions:
            return {"persona_keyword_rate": 0.0}
        hits = sum(1 for t in predictions if pattern.search(t))
        return {"persona_keyword_rate": hits / len(predictions)}
