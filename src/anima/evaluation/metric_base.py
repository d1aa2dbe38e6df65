"""The part every local `evaluate` metric script (evaluation/metrics/<name>/<name>.py) shares.

`evaluate.load(<dir>)` copies the script into its module cache and imports it from there, so a relative
import would not resolve; the scripts import this module absolutely, which works wherever anima is
installed (evaluate only checks that the `anima` library imports). The loader takes the first concrete
`EvaluationModule` subclass in the script's namespace, so :class:`ReplyMetric` is abstract and is
skipped even when imported by name.
"""

from __future__ import annotations

import abc
from typing import Any

import datasets
import evaluate


class ReplyMetric(evaluate.Metric, abc.ABC):
    """An `evaluate` metric over generated replies, described by class attributes instead of an ``_info``.

    Subclasses set ``DESCRIPTION``, ``INPUTS`` (the arguments and returns) and ``CITATION``, set
    ``REFERENCES = True`` when they also take one reference reply per prediction, and define
    ``_compute``. The class docstring is ``DESCRIPTION + INPUTS``, as `evaluate`'s metric template makes it.
    """

    DESCRIPTION = ""
    INPUTS = ""
    CITATION = ""
    REFERENCES = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__doc__ = cls.DESCRIPTION + cls.INPUTS + "\n\n" + (cls.__dict__.get("__doc__") or "")

    def _info(self) -> evaluate.MetricInfo:
        columns = {"predictions": datasets.Value("string")}
        if self.REFERENCES:
            columns["references"] = datasets.Value("string")
        return evaluate.MetricInfo(
            description=self.DESCRIPTION,
            citation=self.CITATION,
            inputs_description=self.INPUTS,
            features=datasets.Features(columns),
        )

    @abc.abstractmethod
    def _compute(self, predictions: list[str], **kwargs: Any) -> dict[str, Any]:
        """Scores for the batch of ``predictions`` (and ``references`` when ``REFERENCES``)."""
