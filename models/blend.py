"""Blends of the members' probabilities into the ensemble's, learned online from the labels.

`HedgedStack` is the ensemble's: `StackingBlend`, an online logistic regression on the members' logits, so
each member contributes what it knows that the others do not, hedged by `LogLossBlend`, a Bayesian mixture
of the members and the stack, so that the ensemble's log loss stays within a constant of the best of them
while the stack is still learning (right after LightGBM's first model, after a drift) or noisy (rare
positives).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

EPS = 1e-6
LOGIT_LIMIT = math.log((1 - EPS) / EPS)


def clipped_log_loss(y: bool, p: float) -> float:
    p = min(max(p, EPS), 1 - EPS)
    return -math.log(p if y else 1 - p)


def logit(p: float) -> float:
    p = min(max(p, EPS), 1 - EPS)
    return math.log(p / (1 - p))


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1 / (1 + math.exp(-z))
    e = math.exp(z)
    return e / (1 + e)


class StackingBlend:
    """Online logistic regression on the members' logits: P = σ(b + Σ wᵢ·logit(pᵢ)), learned prequentially.

    Every prediction uses the coefficients learned from the labels before it; `update` then takes one
    gradient step on that event's log loss, with step size `learning_rate` scaled per coefficient by the
    root mean square of its recent gradients (RMSprop, decay `gradient_decay`), so that a step moves a
    coefficient by about `learning_rate` whatever the logits' scale or the base rate, and keeps moving
    after a drift (AdaGrad's steps shrink for good). `l2` pulls the coefficients towards their prior.

    The first member to score (`river`) starts with coefficient 1 and every later member with 0, so a
    newcomer changes nothing until the labels show what it adds; while a single member scores, the blend
    is that member's score and learns nothing. Any fixed blend, each member alone included, is one point
    of the coefficients' space: online gradient descent on a convex loss tracks the best of them, so over
    a stream the stack scores at least as well as the best member, less a regret that vanishes per event.
    Pure Python floats in a fixed order: the same labels give the same coefficients on any machine, and
    the state pickles exactly.

    >>> blend = StackingBlend()
    >>> blend.blend({"river": 0.8, "lightgbm": None})
    (0.8, {'river': 1.0, 'lightgbm': 0.0, 'bias': 0.0})
    >>> for _ in range(300):
    ...     blend.update({"river": 0.6, "lightgbm": 0.9}, True)
    ...     blend.update({"river": 0.6, "lightgbm": 0.1}, False)
    >>> [round(blend.combine({"river": 0.6, "lightgbm": p}), 2) for p in (0.9, 0.1)]
    [0.97, 0.03]

    """

    def __init__(self, learning_rate: float = 0.01, l2: float = 1e-4, gradient_decay: float = 0.999):
        if not learning_rate > 0:
            raise ValueError(f"blend learning_rate must be > 0; got {learning_rate}")
        if not l2 >= 0:
            raise ValueError(f"blend l2 must be >= 0; got {l2}")
        if not 0 < gradient_decay < 1:
            raise ValueError(f"blend gradient_decay must be in (0, 1); got {gradient_decay}")
        self.learning_rate = learning_rate
        self.l2 = l2
        self.gradient_decay = gradient_decay
        self.coefficients: dict[str, float] = {}  # by member, in the order members first scored
        self.priors: dict[str, float] = {}
        self.bias = 0.0
        self.squares: dict[str, float] = {}  # running mean of squared gradients, by coefficient ("bias" too)
        self.updates = 0

    def weights(self, scores: Mapping[str, float | None]) -> dict[str, float]:
        """The coefficient of each member scoring now (0 for those not scoring), and the bias."""
        self._meet(scores)
        present = [name for name, p in scores.items() if p is not None]
        if len(present) < 2:
            return {**{name: float(name in present) for name in scores}, "bias": 0.0}
        return {**{name: self.coefficients[name] if name in present else 0.0 for name in scores}, "bias": self.bias}

    def combine(self, scores: Mapping[str, float | None]) -> float:
        return self.blend(scores)[0]

    def blend(self, scores: Mapping[str, float | None]) -> tuple[float, dict[str, float]]:
        """The blended score and the coefficients that gave it."""
        weights = self.weights(scores)
        present = [(name, p) for name, p in scores.items() if p is not None]
        if len(present) == 1:
            return present[0][1], weights
        if not present:
            return 0.5, weights
        return sigmoid(self._margin(present)), weights

    def update(self, scores: Mapping[str, float | None], y: bool) -> None:
        """One prequential step on the event's log loss, with the coefficients that scored it."""
        self._meet(scores)
        present = [(name, p) for name, p in scores.items() if p is not None]
        if len(present) < 2:
            return
        error = sigmoid(self._margin(present)) - float(y)
        lr, l2 = self.learning_rate, self.l2
        for name, p in present:
            w = self.coefficients[name]
            self.coefficients[name] = w - lr * self._scaled(name, error * logit(p) + l2 * (w - self.priors[name]))
        self.bias -= lr * self._scaled("bias", error + l2 * self.bias)
        self.updates += 1

    def _margin(self, present: list[tuple[str, float]]) -> float:
        return self.bias + sum(self.coefficients[name] * logit(p) for name, p in present)

    def _scaled(self, name: str, gradient: float) -> float:
        decay = self.gradient_decay
        square = decay * self.squares.get(name, gradient * gradient) + (1 - decay) * gradient * gradient
        self.squares[name] = square
        return gradient / (math.sqrt(square) + 1e-8)

    def _meet(self, scores: Mapping[str, float | None]) -> None:
        for name, p in scores.items():
            if p is not None and name not in self.coefficients:
                prior = 0.0 if self.coefficients else 1.0
                self.coefficients[name] = self.priors[name] = prior


class LogLossBlend:
    """Online weights ∝ exp(−discounted log loss): a Bayesian mixture with forgetting.

    w_i ∝ exp(−L_i), where L_i is the member's discounted cumulative log loss (L ← decay·L + loss). Without
    forgetting (decay = 1) the mixture's total log loss is at most the best member's plus ln(number of
    members), whatever the data; forgetting lets the weights move again after a drift. A member that is
    absent (no LightGBM model yet) gets no weight.
    """

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


class HedgedStack:
    """The members and their `StackingBlend` as experts of a `LogLossBlend`: the stack where it scores better,
    the best member where the stack has not caught up yet.

    The mixture's log loss over a stream is at most the best expert's plus ln 3 (without forgetting), and
    the stack is at least as good as the best member once it has learned: so the blend is at least the best
    member over the whole stream, and the stack carries it beyond. While one member scores, the blend is
    that member's score.

    >>> blend = HedgedStack()
    >>> blend.blend({"river": 0.8, "lightgbm": None})
    (0.8, {'river': 1.0, 'lightgbm': 0.0, 'stack': 0.0, 'stack_river': 1.0, 'stack_lightgbm': 0.0, 'stack_bias': 0.0})

    """

    def __init__(self, learning_rate: float = 0.01, l2: float = 1e-4, decay: float = 0.999):
        self.stack = StackingBlend(learning_rate, l2)
        self.mixture = LogLossBlend(decay)

    def combine(self, scores: Mapping[str, float | None]) -> float:
        return self.blend(scores)[0]

    def blend(self, scores: Mapping[str, float | None]) -> tuple[float, dict[str, float]]:
        """The blended score, and the weights that gave it: the mixture's share of each member and of the
        stack, then the stack's coefficients (`stack_<member>`, `stack_bias`)."""
        experts = self._experts(scores)
        score, shares = self.mixture.blend(experts)
        coefficients = self.stack.weights(scores)
        return score, {**shares, **{f"stack_{name}": w for name, w in coefficients.items()}}

    def describe(self, members: Sequence[str]) -> dict[str, float]:
        """The weights `blend` gives when all `members` score, without touching the state: the mixture's
        shares of the members and the stack, then the stack's coefficients (0 for a member not met yet)."""
        shares = self.mixture.weights(dict.fromkeys([*members, "stack"], 0.5))
        coefficients = {f"stack_{name}": self.stack.coefficients.get(name, 0.0) for name in members}
        return {**shares, **coefficients, "stack_bias": self.stack.bias}

    def update(self, scores: Mapping[str, float | None], y: bool) -> None:
        self.mixture.update(self._experts(scores), y)
        self.stack.update(scores, y)

    def _experts(self, scores: Mapping[str, float | None]) -> dict[str, float | None]:
        several = sum(p is not None for p in scores.values()) > 1
        return {**scores, "stack": self.stack.combine(scores) if several else None}
