"""Repetition rate: fraction of a reply's word n-grams that repeat an earlier one in it (local module)."""

from anima.evaluation.metric_base import ReplyMetric


def repetition_rate(text, n):
    tokens = text.lower().split()
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return None
    return 1.0 - len(set(grams)) / len(grams)


class Repetition(ReplyMetric):
    DESCRIPTION = """Per reply: rep_n = 1 - unique n-grams / total n-grams (seq-rep-n of Welleck et al. 2020),
tokens being lowercased whitespace-split words. Reported as the mean over replies that have at least
one n-gram (shorter replies cannot repeat and are left out); 0 when none has. In [0, 1]; lower =
less degenerate looping."""
    INPUTS = """
Args:
    predictions: list of generated replies (str).
    n: n-gram order (default 3).
Returns:
    repetition_<n>: mean repeated-n-gram fraction; repetition_<n>_replies: replies that were scored.
"""
    CITATION = """Welleck, Kulikov, Roller, Dinan, Cho, Weston. 2020. Neural Text Generation with Unlikelihood
Training. ICLR (seq-rep-n)."""

    def _compute(self, predictions, n=3):
        rates = [r for r in (repetition_rate(t, n) for t in predictions) if r is not None]
        return {
            f"repetition_{n}": sum(rates) / len(rates) if rates else 0.0,
            f"repetition_{n}_replies": len(rates),
        }
