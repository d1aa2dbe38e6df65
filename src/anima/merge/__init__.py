"""Model merging: streamed per-tensor methods (uniform, weighted, slerp, task arithmetic, TIES),
the greedy-soup procedure and the compatibility check. Imports torch: keep out of CLI start-up."""

from anima.merge.apply import merge_models
from anima.merge.compat import check_compatible, tokenizer_fingerprint
from anima.merge.methods import MergeMethod, get_method, perplexity_weights, register, registered
from anima.merge.soup import greedy_soup
from anima.merge.streaming import merge, merge_state_dict

__all__ = [
    "MergeMethod",
    "check_compatible",
    "get_method",
    "greedy_soup",
    "merge",
    "merge_models",
    "merge_state_dict",
    "perplexity_weights",
    "register",
    "registered",
    "tokenizer_fingerprint",
]
