"""Which class of a binary label is the event of interest.

Shared because training (metrics, plots, the gate) and serving (the score histogram) must read a
model's probabilities the same way. scikit-learn sorts ``classes_``; without ``model.positive_class``
the positive class is the last one (1, ``True``, ``"yes"``), which for labels such as
``"good"``/``"bad"`` is rarely the event a business watches -- hence the spec setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def positive_index(classes: Sequence[Any] | Any, positive_class: Any = None) -> int:
    """Index of the positive class in ``classes`` (a fitted classifier's sorted ``classes_``).

    Classes are matched by their text (``1`` matches ``"1"``, ``True`` matches ``"True"``), as the label
    is read from the feature table as integers or strings."""
    if positive_class is None:
        return len(classes) - 1
    matches = [i for i, c in enumerate(classes) if str(c) == str(positive_class)]
    if not matches:
        hint = " (unquoted yes/no/true/false/on/off are YAML booleans: quote the value)" \
            if isinstance(positive_class, bool) else ""
        raise ValueError(f"model.positive_class {positive_class!r} is not one of the label's classes "
                         f"{[str(c) for c in classes]}: write one of them{hint}")
    return matches[0]


def check_binary(classes: Sequence[Any] | Any, positive_class: Any) -> None:
    """``model.positive_class`` is only meaningful for a label with exactly two classes."""
    if positive_class is not None and len(classes) != 2:
        raise ValueError(f"model.positive_class applies to a binary label; this label has {len(classes)} classes "
                         f"({[str(c) for c in classes][:10]}): remove model.positive_class")
    positive_index(classes, positive_class)
