"""The ensemble's blend: at least the best member where each member wins half the time, exact after a pickle."""

from __future__ import annotations

import math
import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.blend import HedgedStack, LogLossBlend, StackingBlend, clipped_log_loss, sigmoid
from models.metrics import ExactROCAUC


def complementary(seed: int, n: int = 6000):
    """Each member sees half of the truth: the true logit is a + b, River scores from a, LightGBM from b."""
    rng = random.Random(seed)
    for _ in range(n):
        a, b = rng.gauss(0, 2), rng.gauss(0, 2)
        y = rng.random() < sigmoid(a + b - 2)
        yield {"river": sigmoid(a - 1 + rng.gauss(0, 0.3)), "lightgbm": sigmoid(b - 1 + rng.gauss(0, 0.3))}, y


def swapping(seed: int, n: int = 6000):
    """One member is informed and the other guesses, and they swap at the middle of the stream (a drift)."""
    rng = random.Random(seed)
    for i in range(n):
        a = rng.gauss(0, 2)
        y = rng.random() < sigmoid(a - 2.5)
        informed, guessing = sigmoid(a - 2.5 + rng.gauss(0, 0.5)), sigmoid(rng.gauss(-2.5, 1))
        river, lightgbm = (informed, guessing) if i < n // 2 else (guessing, informed)
        yield {"river": river, "lightgbm": lightgbm}, y


def quality(blend, stream) -> dict[str, tuple[float, float]]:
    """Prequential (log loss, ROC AUC) of each member and of the blend."""
    loss = {"river": 0.0, "lightgbm": 0.0, "blend": 0.0}
    auc = {name: ExactROCAUC() for name in loss}
    n = 0
    for scores, y in stream:
        for name, p in {**scores, "blend": blend.combine(scores)}.items():
            loss[name] += clipped_log_loss(y, p)
            auc[name].update(y, p)
        blend.update(scores, y)
        n += 1
    return {name: (loss[name] / n, auc[name].get()) for name in loss}


def assert_at_least_the_best_member(q: dict[str, tuple[float, float]]) -> None:
    assert q["blend"][0] <= min(q["river"][0], q["lightgbm"][0])
    assert q["blend"][1] >= max(q["river"][1], q["lightgbm"][1])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("make", [HedgedStack, StackingBlend])
def test_the_blend_beats_the_best_member_when_each_knows_half(make, seed):
    events = list(complementary(seed))
    half = len(events) // 2
    blend = make()
    assert_at_least_the_best_member(quality(blend, events[:half]))
    after_the_middle = quality(blend, events[half:])
    assert_at_least_the_best_member(after_the_middle)
    # Each member alone misses half the signal: the blend recovers it, far beyond either.
    assert after_the_middle["blend"][0] < 0.75 * min(after_the_middle["river"][0], after_the_middle["lightgbm"][0])


@pytest.mark.parametrize("seed", range(3))
def test_the_blend_follows_whichever_member_is_informed_over_a_swap(seed):
    q = quality(HedgedStack(), swapping(seed))
    assert_at_least_the_best_member(q)
    assert q["blend"][1] > max(q["river"][1], q["lightgbm"][1]) + 0.05


def test_with_one_member_the_blend_is_that_member_and_learns_nothing():
    blend = HedgedStack()
    for p, y in [(0.2, False), (0.9, True), (0.7, False)]:
        assert blend.combine({"river": p, "lightgbm": None}) == p
        blend.update({"river": p, "lightgbm": None}, y)
    assert blend.stack.updates == 0 and blend.stack.coefficients == {"river": 1.0}


def test_a_newcomer_changes_nothing_before_it_is_learned():
    blend = StackingBlend()
    blend.update({"river": 0.3, "lightgbm": None}, True)
    assert blend.combine({"river": 0.3, "lightgbm": 0.99}) == pytest.approx(0.3)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cut=st.integers(0, 400))
def test_a_pickled_blend_goes_on_exactly_as_the_uninterrupted_one(seed, cut):
    events = list(complementary(seed, n=400))
    whole, interrupted = HedgedStack(), HedgedStack()
    for scores, y in events[:cut]:
        interrupted.combine(scores)
        interrupted.update(scores, y)
    interrupted = pickle.loads(pickle.dumps(interrupted))
    for i, (scores, y) in enumerate(events):
        expected = whole.blend(scores)
        if i >= cut:
            assert interrupted.blend(scores) == expected  # bit for bit, weights included
            interrupted.update(scores, y)
        whole.update(scores, y)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"learning_rate": 0.0}, "learning_rate"), ({"l2": -1.0}, "l2"), ({"gradient_decay": 1.0}, "gradient_decay")],
)
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StackingBlend(**kwargs)


def test_the_log_loss_is_finite_on_certain_members():
    blend = HedgedStack()
    for y in (True, False) * 50:
        blend.update({"river": 1.0, "lightgbm": 0.0}, y)
    assert math.isfinite(blend.combine({"river": 1.0, "lightgbm": 0.0}))


@pytest.mark.parametrize(
    ("make", "experts"),
    [(lambda: LogLossBlend(decay=1.0), 2), (lambda: HedgedStack(decay=1.0), 3)],
    ids=["log_loss_mixture", "hedged_stack"],
)
@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 0.99), st.floats(0.01, 0.99), st.booleans()), min_size=1, max_size=200))
def test_without_forgetting_a_blend_is_never_worse_than_the_best_member_by_more_than_ln_experts(make, experts, stream):
    """The exponential-weights bound: a mixture of k experts loses at most ln k to the best of them; the
    mixture weighs the two members, the hedged stack the members and the stack."""
    blend = make()
    totals = {"river": 0.0, "lightgbm": 0.0, "blend": 0.0}
    for river, lightgbm, y in stream:
        scores = {"river": river, "lightgbm": lightgbm}
        totals["blend"] += clipped_log_loss(y, blend.combine(scores))
        totals["river"] += clipped_log_loss(y, river)
        totals["lightgbm"] += clipped_log_loss(y, lightgbm)
        blend.update(scores, y)
    assert totals["blend"] <= min(totals["river"], totals["lightgbm"]) + math.log(experts) + 1e-9


def test_describe_gives_the_weights_of_a_blend_without_changing_it():
    blend = HedgedStack()
    events = list(complementary(0, n=300))
    for scores, y in events:
        blend.update(scores, y)
    before = pickle.dumps(blend)
    described = blend.describe(["river", "lightgbm"])
    assert pickle.dumps(blend) == before
    assert described == blend.blend(events[0][0])[1]
    assert sum(described[name] for name in ("river", "lightgbm", "stack")) == pytest.approx(1.0)
