"""Persona-keyword rate: fraction of replies mentioning at least one persona keyword (local module)."""

import re

from anima.evaluation.metric_base import ReplyMetric


def keyword_pattern(keywords):
    parts = [r"\s+".join(re.escape(w) for w in k.split()) for k in keywords if k and k.strip()]
    if not parts:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE)


class PersonaKeywords(ReplyMetric):
    DESCRIPTION = """Fraction of replies that contain at least one of the given keywords, case-insensitive, as a
whole word or phrase (not inside another word: 'bot' does not match 'robot'; inner whitespace of a
phrase matches any whitespace). In [0, 1]; 0 for no replies or no keywords."""
    INPUTS = """
Args:
    predictions: list of generated replies (str).
    keywords: list of persona keywords or phrases (str).
Returns:
    persona_keyword_rate: share of replies with a keyword.
"""

    def _compute(self, predictions, keywords=()):
        pattern = keyword_pattern(list(keywords))
        if pattern is None or not predictions:
            return {"persona_keyword_rate": 0.0}
        hits = sum(1 for t in predictions if pattern.search(t))
        return {"persona_keyword_rate": hits / len(predictions)}
