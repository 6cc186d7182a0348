"""Blend member probabilities with weights learned online from each member's recent log loss.

The weights are a Bayesian mixture with forgetting: w_i ∝ exp(−L_i), where L_i is the member's discounted
cumulative log loss (L ← decay·L + loss). Without forgetting (decay = 1) the mixture's total log loss is at
most the best member's plus ln(number of members), whatever the data; forgetting lets the weights move
again after a drift. A member that is absent (no LightGBM model yet) gets no weight.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

EPS = 1e-6


def clipped_log_loss(y: bool, p: float) -> float:
    p = min(max(p, EPS), 1 - EPS)
    return -math.log(p if y else 1 - p)


class LogLossBlend:
    """Online weights ∝ exp(−discounted log loss)."""

    def __init__(self, decay: float = 0.999):
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1]; got {decay}")
        self.decay = decay
        self.losses: dict[str, float] = {}

    def weights(self, scores: Mapping[str, float | None]) -> dict[str, float]:
        present = [name for name, p in scores.items() if p is not None]
        losses = {name: self._loss(name) for name in present}
        best = min(losses.values(), default=0.0)
        raw = {name: math.exp(best - loss) for name, loss in losses.items()}
        total = sum(raw.values())
        return {name: raw.get(name, 0.0) / total for name in scores}

    def combine(self, scores: Mapping[str, float | None]) -> float:
        return self.blend(scores)[0]

    def blend(self, scores: Mapping[str, float | None]) -> tuple[float, dict[str, float]]:
        """The blended score and the weights that gave it, computing the weights once."""
        weights = self.weights(scores)
        return sum(weights[name] * p for name, p in scores.items() if p is not None), weights

    def update(self, scores: Mapping[str, float | None], y: bool) -> None:
        present = {name: p for name, p in scores.items() if p is not None}
        before = {name: self._loss(name) for name in present}  # newcomers start level with the others
        for name, p in present.items():
            self.losses[name] = self.decay * before[name] + clipped_log_loss(y, p)

    def _loss(self, name: str) -> float:
        """A newcomer starts level with the average member: an even bet, as a mixture's prior is."""
        if name in self.losses:
            return self.losses[name]
        return sum(self.losses.values()) / len(self.losses) if self.losses else 0.0
