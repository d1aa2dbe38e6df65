"""chrF: character n-gram F-score (Popović 2015), n = 1..6, beta = 2 (local module)."""

import collections

from anima.evaluation.metric_base import ReplyMetric


def char_ngrams(text, n):
    chars = "".join(text.split())
    return collections.Counter(chars[i : i + n] for i in range(len(chars) - n + 1))


def chrf_statistics(predictions, references, char_order=6):
    """Per order: [hyp n-grams, ref n-grams, matched n-grams], summed over the corpus."""
    stats = [[0, 0, 0] for _ in range(char_order)]
    for hyp, ref in zip(predictions, references):
        for n in range(1, char_order + 1):
            h, r = char_ngrams(hyp, n), char_ngrams(ref, n)
            stats[n - 1][0] += sum(h.values())
            stats[n - 1][1] += sum(r.values())
            stats[n - 1][2] += sum((h & r).values())
    return stats


def chrf_from_statistics(stats, beta=2.0):
    precisions, recalls = [], []
    for n_hyp, n_ref, n_match in stats:
        if n_hyp > 0 and n_ref > 0:
            precisions.append(n_match / n_hyp)
            recalls.append(n_match / n_ref)
    if not precisions:
        return 0.0, 0.0, 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    factor = beta**2
    f = (1 + factor) * p * r / (factor * p + r) if (p + r) > 0 else 0.0
    return p, r, f


class Chrf(ReplyMetric):
    DESCRIPTION = """Corpus-level chrF as computed by sacreBLEU 2.x CHRF(char_order=6, word_order=0, beta=2,
whitespace=False, eps_smoothing=False): whitespace is removed before extracting character n-grams;
for each order n the hypothesis, reference and matched n-gram counts (match = clipped min of counts)
are summed over the corpus; chrP and chrR are the means of P_n and R_n over the orders where both
hypothesis and reference have n-grams; chrF = (1 + beta^2) chrP chrR / (beta^2 chrP + chrR).
Case-sensitive. Reported on sacreBLEU's 0-100 scale."""
    INPUTS = """
Args:
    predictions: list of generated replies (str).
    references: list of reference replies (str), one per prediction.
    char_order: max character n-gram order (default 6). beta: recall weight (default 2).
Returns:
    chrf: corpus chrF in [0, 100]; chrf_precision, chrf_recall: chrP and chrR in [0, 100].
"""
    CITATION = """Popović, Maja. 2015. chrF: character n-gram F-score for automatic MT evaluation.
Proceedings of the Tenth Workshop on Statistical Machine Translation, 392-395."""
    REFERENCES = True

    def _compute(self, predictions, references, char_order=6, beta=2.0):
        p, r, f = chrf_from_statistics(chrf_statistics(predictions, references, char_order), beta)
        return {"chrf": 100.0 * f, "chrf_precision": 100.0 * p, "chrf_recall": 100.0 * r}
