"""distinct-1/2: share of unique word n-grams among all n-grams of the replies (local module)."""

from anima.evaluation.metric_base import ReplyMetric


def ngrams(tokens, n):
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(predictions, n):
    total, unique = 0, set()
    for text in predictions:
        grams = ngrams(text.lower().split(), n)
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


class Distinct(ReplyMetric):
    DESCRIPTION = """distinct-n = number of unique n-grams / total number of n-grams, pooled over all predictions
(corpus level; n-grams never cross reply boundaries). Tokens: lowercased whitespace-split words.
0 when there is no n-gram at all. In [0, 1]; higher = more diverse. Li et al. (2016) count distinct
unigrams/bigrams and scale by the number of generated tokens; for n = 1 that is this value, for n >= 2
this divides by the n-gram count instead (n - 1 fewer per reply), so distinct_n = 1 exactly when no
n-gram repeats."""
    INPUTS = """
Args:
    predictions: list of generated replies (str).
    orders: n-gram orders to report (default (1, 2)).
Returns:
    distinct_<n> for each order.
"""
    CITATION = """Li, Galley, Brockett, Gao, Dolan. 2016. A Diversity-Promoting Objective Function for Neural
Conversation Models. NAACL-HLT."""

    def _compute(self, predictions, orders=(1, 2)):
        return {f"distinct_{n}": distinct_n(predictions, n) for n in orders}
