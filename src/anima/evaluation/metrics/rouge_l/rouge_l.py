"""ROUGE-L: longest-common-subsequence F-measure between a reply and its reference (local module)."""

import re

from anima.evaluation.metric_base import ReplyMetric

_NON_ALPHANUM = re.compile(r"[^a-z0-9]+")


def tokens(text):
    """rouge-score's default tokenizer without stemming (rouge_score/tokenize.py): lowercase, every run of
    characters outside [a-z0-9] becomes a space (so punctuation and non-ASCII letters split words), split."""
    return _NON_ALPHANUM.sub(" ", text.lower()).split()


def lcs_length(a, b):
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l_pair(prediction, reference):
    p_tok, r_tok = tokens(prediction), tokens(reference)
    lcs = lcs_length(p_tok, r_tok)
    if lcs == 0:
        return 0.0, 0.0, 0.0
    p, r = lcs / len(p_tok), lcs / len(r_tok)
    return p, r, 2 * p * r / (p + r)


class RougeL(ReplyMetric):
    DESCRIPTION = """ROUGE-L F-measure, equal to rouge-score's RougeScorer(["rougeL"]).score(reference, prediction)
.fmeasure with its default tokenizer and no stemming: text is lowercased, every run of characters outside
[a-z0-9] becomes a space (punctuation never sticks to a word), tokens are the whitespace-separated pieces;
P = LCS/len(prediction), R = LCS/len(reference), F = 2PR/(P+R) (0 when either side has no token or LCS is
0). Reported as the mean over pairs, in [0, 1]."""
    INPUTS = """
Args:
    predictions: list of generated replies (str).
    references: list of reference replies (str), one per prediction.
Returns:
    rouge_l: mean F-measure; rouge_l_precision, rouge_l_recall: mean P and R.
"""
    CITATION = """Lin, Chin-Yew. 2004. ROUGE: A Package for Automatic Evaluation of Summaries.
Text Summarization Branches Out, ACL Workshop."""
    REFERENCES = True

    def _compute(self, predictions, references):
        scores = [rouge_l_pair(p, r) for p, r in zip(predictions, references)]
        n = max(len(scores), 1)
        return {
            "rouge_l": sum(s[2] for s in scores) / n,
            "rouge_l_precision": sum(s[0] for s in scores) / n,
            "rouge_l_recall": sum(s[1] for s in scores) / n,
        }
