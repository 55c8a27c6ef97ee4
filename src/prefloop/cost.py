"""What labels cost and what they buy, for the dashboard (``apps/rater_quality.py``) and ``bench``.

A run's price is an hourly rate (people paid per rating hour) or a cost per label. Return gained
is the true return above the baseline (the first evaluation on the dashboard, a random policy in
``bench``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CostSettings:
    """What a label costs: ``hourly_rate`` (per rating hour) or ``cost_per_label``; the latter
    wins when both are set."""

    hourly_rate: float | None = None
    cost_per_label: float | None = None
    currency: str = "USD"

    def total(self, labels: int, hours: float) -> float | None:
        """The cost of ``labels`` labels given in ``hours`` human hours; None when no price is set."""
        if self.cost_per_label is not None:
            return self.cost_per_label * labels
        if self.hourly_rate is not None:
            return self.hourly_rate * hours
        return None


def cost_settings_from(data: dict[str, Any] | None) -> CostSettings | None:
    """Settings from a JSON object (``hourly_rate``, ``cost_per_label``, ``currency``); bad or
    negative numbers are ignored; None when no price is left."""
    if not isinstance(data, dict):
        return None

    def price(key: str) -> float | None:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            return None
        return float(value)

    currency = data.get("currency")
    settings = CostSettings(price("hourly_rate"), price("cost_per_label"),
                            currency if isinstance(currency, str) and 0 < len(currency) <= 8 else "USD")
    return settings if settings.hourly_rate is not None or settings.cost_per_label is not None else None


def per(gain: float | None, amount: float | None) -> float | None:
    """``gain / amount``, None when either is missing or the amount is 0."""
    if gain is None or amount is None or amount <= 0 or not math.isfinite(gain):
        return None
    return gain / amount
