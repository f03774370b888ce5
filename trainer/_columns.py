"""What the model's ``forward`` takes: its label names, and the columns a batch may keep.

Hugging Face reads all three from the signature of ``forward``, and so do we:

- the label names are its parameters with ``label`` in the name (plus ``start_positions`` and
  ``end_positions`` for a question-answering model), unless ``label_names`` says otherwise;
- the kept columns (``remove_unused_columns``) are its parameter names, plus ``label``,
  ``label_ids`` (collators rename both to ``labels``) and the label names. Raw columns such as
  ``text`` or ``idx`` are dropped before the collator sees a sample, so they never reach
  ``forward``. A ``**kwargs`` parameter keeps nothing extra, as in Hugging Face: its models all
  take ``**kwargs``, and dropping only unnamed columns is the point.

The kept set is worked out once, when a loader is built; `ColumnFilter` then wraps the collator,
so a sample that holds only kept columns costs one subset test.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog
from torch import nn

from trainbus.bus._errors import ConfigurationError

__all__ = ["ColumnFilter", "can_return_loss", "default_label_names", "signature_columns"]

logger = structlog.get_logger(__name__)


def _forward_parameters(model_class: type[nn.Module]) -> list[str]:
    return list(inspect.signature(model_class.forward).parameters)


def default_label_names(model: nn.Module) -> list[str]:
    """The names of the labels ``model.forward`` takes (Hugging Face's ``find_labels``)."""
    parameters = _forward_parameters(type(model))
    question_answering = "QuestionAnswering" in type(model).__name__
    spans = ("start_positions", "end_positions") if question_answering else ()
    return [name for name in parameters if "label" in name or name in spans]


def can_return_loss(model: nn.Module) -> bool:
    """Whether ``forward`` returns a loss without labels (a ``return_loss=True`` default)."""
    parameter = inspect.signature(type(model).forward).parameters.get("return_loss")
    return parameter is not None and parameter.default is True


def signature_columns(model: nn.Module, label_names: Iterable[str]) -> frozenset[str]:
    """The sample keys a batch keeps: ``forward``'s parameters, the label spellings, the labels."""
    return frozenset(
        [*inspect.signature(model.forward).parameters, "label", "label_ids", *label_names]
    )


class ColumnFilter:
    """Wraps a collator so that it sees only the columns ``forward`` takes.

    Samples that are not mappings pass through untouched. The dropped columns are logged once,
    naming the data set (``description``), as Hugging Face does; a sample left with no column at
    all is an error naming what it had.
    """

    def __init__(
        self,
        collator: Callable[[list[Any]], Any],
        kept: frozenset[str],
        *,
        model_name: str,
        description: str,
    ) -> None:
        self.collator = collator
        self.kept = kept
        self.model_name = model_name
        self.description = description
        self._logged = False

    def __call__(self, samples: list[Any]) -> Any:
        kept = self.kept
        return self.collator(
            [
                sample
                if not isinstance(sample, Mapping) or kept.issuperset(sample)
                else self._keep(sample)
                for sample in samples
            ]
        )

    def _keep(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        filtered = {key: value for key, value in sample.items() if key in self.kept}
        if not filtered:
            raise ConfigurationError(
                f"No column of the {self.description} set is an argument of "
                f"{self.model_name}.forward: the samples have {sorted(sample)}, forward takes "
                f"{sorted(self.kept)}. Rename the columns, or set remove_unused_columns=False "
                "to pass them all."
            )
        if not self._logged:
            self._logged = True
            logger.info(
                "columns not taken by forward are dropped",
                data_set=self.description,
                model=self.model_name,
                columns=sorted(set(sample) - self.kept),
            )
        return filtered
