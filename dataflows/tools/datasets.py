"""Data sets that the replay tool, the demo, tests and benchmarks stream into Kafka.

Every data set is an iterator of event dicts in the contract's shape (`event_id`, `ts`, fields, `label`),
so the same code replays River's Phishing data, the synthetic card-payment stream and a user's own file.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from features.timestamps import iso, to_ms

START = datetime(2026, 1, 1, tzinfo=UTC)

CATEGORIES = ["grocery", "restaurant", "fuel", "travel", "electronics", "fashion", "gift_cards", "digital_goods"]
RISKY_BEFORE_DRIFT = ["electronics", "gift_cards"]
COUNTRIES = ["FR", "DE", "ES", "IT", "NL", "GB", "US", "BR", "NG", "VN"]


class DatasetError(ValueError):
    """A data set file that cannot be read; the message names the file and line."""


def phishing(limit: int | None = None) -> Iterator[dict]:
    """River's Phishing data set in its original order, one event a second from 2026-01-01."""
    from river import datasets

    for i, (x, y) in enumerate(datasets.Phishing()):
        if limit is not None and i >= limit:
            return
        yield {"event_id": f"phishing-{i:05d}", "ts": iso(to_ms(START + timedelta(seconds=i))), **x, "label": bool(y)}


@dataclass
class _User:
    user_id: str
    country: str
    log_amount: float
    favourites: list[str]


@dataclass
class _Merchant:
    merchant_id: str
    category: str
    country: str


def transactions(
    n: int = 100_000,
    seed: int = 42,
    drift_at: float | None = 0.5,
    users: int = 2_000,
    merchants: int = 400,
    fraud_rate: float = 0.004,
    events_per_second: float = 1.0,
) -> Iterator[dict]:
    """A synthetic card-payment stream in event-time order, deterministic for a given seed.

    Legitimate payments come from users at a handful of favourite merchants, with amounts near the user's
    usual. Fraud is what windowed features reveal. Before the drift: a stolen card is used in a burst of
    large payments within minutes at new, risky merchants. After the drift (at fraction `drift_at` of the
    stream): card testing, i.e. bursts of tiny payments from many cards at one foreign merchant.

    Events come about `1 / events_per_second` seconds apart in event time. A denser stream is the same
    events with every time divided by `events_per_second` (bursts included): its windows hold more events,
    as a busy stream's do.
    """
    if not events_per_second > 0:
        raise ValueError(f"events_per_second must be > 0, got {events_per_second!r}")
    rng = random.Random(seed)
    people = [
        _User(
            user_id=f"u{u:05d}",
            country=rng.choice(COUNTRIES[:6]),
            log_amount=rng.gauss(3.3, 0.7),
            favourites=[],
        )
        for u in range(users)
    ]
    shops = [_Merchant(f"m{m:04d}", rng.choice(CATEGORIES), rng.choice(COUNTRIES)) for m in range(merchants)]
    for person in people:
        person.favourites = [rng.choice(shops).merchant_id for _ in range(rng.randint(3, 8))]
    shop_by_id = {s.merchant_id: s for s in shops}
    risky = [s for s in shops if s.category in RISKY_BEFORE_DRIFT] or shops
    testing_shops = [s for s in shops if s.category == "digital_goods"] or shops
    activity = [rng.paretovariate(1.5) for _ in people]
    cumulative = list(itertools.accumulate(activity))
    drift_index = None if drift_at is None else int(n * drift_at)

    pending: list[tuple[float, int, dict]] = []
    clock = 0.0
    order = 0
    emitted = 0
    while emitted < n:
        after_drift = drift_index is not None and emitted >= drift_index
        clock += rng.expovariate(1.0)
        person = rng.choices(people, cum_weights=cumulative)[0]
        shop = shop_by_id[rng.choice(person.favourites)] if rng.random() < 0.9 else rng.choice(shops)
        amount = math.exp(rng.gauss(person.log_amount, 0.35))
        legit = _payment(
            person, shop, amount, person.country if rng.random() < 0.97 else shop.country, rng.random() < 0.001
        )
        order += 1
        heapq.heappush(pending, (clock, order, legit))
        if rng.random() < (fraud_rate / 2 if after_drift else fraud_rate):
            burst_at = clock
            if not after_drift:
                victim = rng.choice(people)
                for _ in range(rng.randint(3, 7)):
                    burst_at += rng.uniform(5, 120)
                    target = rng.choice(risky)
                    order += 1
                    amount = math.exp(person.log_amount + rng.uniform(1.2, 2.5))
                    country = rng.choice([victim.country, target.country])
                    fraud = _payment(victim, target, amount, country, rng.random() < 0.95)
                    heapq.heappush(pending, (burst_at, order, fraud))
            else:
                target = rng.choice(testing_shops)
                for _ in range(rng.randint(6, 15)):
                    burst_at += rng.uniform(1, 30)
                    victim = rng.choice(people)
                    order += 1
                    fraud = _payment(victim, target, rng.uniform(0.5, 3.0), target.country, rng.random() < 0.95)
                    heapq.heappush(pending, (burst_at, order, fraud))
        while pending and pending[0][0] <= clock and emitted < n:
            at, _, fields = heapq.heappop(pending)
            ts = START + timedelta(seconds=at / events_per_second)
            yield {"event_id": f"tx-{emitted:08d}", "ts": iso(to_ms(ts)), **fields}
            emitted += 1


def _payment(user: _User, shop: _Merchant, amount: float, country: str, label: bool) -> dict:
    return {
        "user_id": user.user_id,
        "merchant_id": shop.merchant_id,
        "amount": round(amount, 2),
        "category": shop.category,
        "country": country,
        "label": label,
    }


AGRAWAL_FIELDS = {
    "salary": "double",
    "commission": "double",
    "age": "bigint",
    "elevel": "bigint",
    "car": "bigint",
    "zipcode": "bigint",
    "hvalue": "double",
    "hyears": "bigint",
    "loan": "double",
}
"""The Agrawal events' fields and their types, as `configs/agrawal.toml` declares them."""

AGRAWAL_FUNCTIONS = (1, 4)
"""Agrawal's classification functions before and after the drift: both rules on age, salary, loan and
education that trees learn within a few thousand labels and a linear model does not (its ROC AUC stays near
0.6-0.7 on either)."""


def agrawal(
    n: int = 100_000,
    seed: int = 42,
    drift_at: float | None = 0.5,
    perturbation: float = 0.05,
    events_per_second: float = 1.0,
) -> Iterator[dict]:
    """River's Agrawal loan-approval generator under a `ConceptDriftStream`: the rule that labels the events
    changes from `AGRAWAL_FUNCTIONS[0]` to `[1]` at fraction `drift_at` of the stream (over 1,000 events),
    with `perturbation` noise on the numeric fields. Deterministic for a seed; one event every
    `1 / events_per_second` seconds of event time from 2026-01-01, ids `agrawal-00000000` on."""
    from river.datasets import synth

    if not events_per_second > 0:
        raise ValueError(f"events_per_second must be > 0, got {events_per_second!r}")
    before, after = (
        synth.Agrawal(classification_function=f, seed=seed, perturbation=perturbation) for f in AGRAWAL_FUNCTIONS
    )
    if drift_at is None:
        stream = before
    else:
        stream = synth.ConceptDriftStream(before, after, position=int(n * drift_at), width=1_000, seed=seed)
    for i, (x, y) in enumerate(stream.take(n)):
        ts = START + timedelta(seconds=i / events_per_second)
        fields = {
            name: round(float(x[name]), 2) if kind == "double" else int(x[name])
            for name, kind in AGRAWAL_FIELDS.items()
        }
        yield {"event_id": f"agrawal-{i:08d}", "ts": iso(to_ms(ts)), **fields, "label": bool(y)}


def read_file(path: str | Path, limit: int | None = None) -> Iterator[dict]:
    """Events from a JSONL or CSV file; a malformed line raises `DatasetError` naming file and line."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    with path.open("rb") as handle:
        if suffix in {".jsonl", ".ndjson", ".json"}:
            yield from _read_jsonl(path, handle, limit)
        elif suffix == ".csv":
            yield from _read_csv(path, limit)
        else:
            raise DatasetError(f"{path}: unknown file type {suffix!r}; use .jsonl or .csv")


def _read_jsonl(path: Path, handle, limit: int | None) -> Iterator[dict]:
    count = 0
    for line_no, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        if limit is not None and count >= limit:
            return
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{line_no}: not valid JSON: {exc}") from exc
        if not isinstance(event, dict):
            raise DatasetError(f"{path}:{line_no}: expected a JSON object, got {type(event).__name__}")
        count += 1
        yield event


def _read_csv(path: Path, limit: int | None) -> Iterator[dict]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise DatasetError(f"{path}:1: empty CSV file, expected a header line")
        for count, row in enumerate(reader):
            if limit is not None and count >= limit:
                return
            if None in row or any(v is None for v in row.values()):
                raise DatasetError(
                    f"{path}:{reader.line_num}: expected {len(reader.fieldnames)} columns "
                    f"({', '.join(reader.fieldnames)})"
                )
            yield {key: _csv_value(value) for key, value in row.items()}


def _csv_value(text: str) -> object:
    """CSV cells are text; numbers and booleans are restored so events keep their JSON types."""
    lowered = text.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


_TICKET_OPENERS = [
    "Hello team,",
    "Hi,",
    "Good morning,",
    "Dear support,",
    "Hey there,",
    "Hi again,",
]
_TICKET_TOPICS = [
    "my order {n} has not arrived yet and the tracking page has not changed for {d} days",
    "I cannot reset my password, the reset email never reaches my inbox",
    "the invoice for {month} shows a charge twice, could you check my account",
    "the app crashes when I open the settings page on my phone",
    "I would like to change the delivery address of order {n}",
    "how do I export my data to a spreadsheet before the end of {month}",
    "the discount code from your newsletter is refused at checkout",
    "I was charged after cancelling my subscription in {month}",
    "the package from order {n} arrived damaged, the box was open",
    "can you explain the difference between the basic and the premium plan",
    "my colleague cannot log in since the update yesterday",
    "please close my account and delete my personal data",
]
_TICKET_CLOSERS = [
    "Thanks a lot for your help.",
    "Kind regards.",
    "Best wishes, and thank you.",
    "Looking forward to your answer.",
    "Thank you in advance.",
    "Cheers.",
]
_SPAM_BEFORE = [
    "Congratulations, you are the lucky winner of our prize draw",
    "claim your free gift card now before the offer expires",
    "you have been selected for an exclusive reward, click here",
    "winner winner: a brand new phone is waiting for you",
    "limited offer: claim your prize today, totally free",
]
_SPAM_AFTER = [
    "your wallet will be suspended unless you verify your account",
    "urgent: confirm your crypto transfer within {d} hours",
    "security alert, unusual login detected, verify your identity via the link",
    "your invoice {n} is overdue, pay now through the secure portal",
    "double your bitcoin deposit today with our verified trading bot",
]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August"]


def messages(n: int = 20_000, seed: int = 42, drift_at: float | None = 0.5, spam_rate: float = 0.12) -> Iterator[dict]:
    """Support messages on a help desk, some of them spam (`label`), deterministic for a given seed.

    Fields: `sender` (string), `channel` (string) and `body` (text, ~200 characters). Spam before the drift
    (at fraction `drift_at` of the stream) is prize-draw and gift-card bait; after it, phishing about wallets,
    overdue invoices and account verification, in words the first half never used for spam. Some genuine
    messages borrow spam words ("invoice", "account", "free") and some spam is written plainly, so the body's
    words decide most but not all of the label; spammers also send in bursts from fresh addresses, which a
    per-sender window sees."""
    rng = random.Random(seed)
    customers = [f"c{c:05d}@example.com" for c in range(3_000)]
    drift_index = None if drift_at is None else int(n * drift_at)
    clock = 0.0
    burst: list[str] = []
    for i in range(n):
        after_drift = drift_index is not None and i >= drift_index
        clock += rng.expovariate(1 / 3.0)
        if burst:
            sender, spam = burst.pop(), True
        elif rng.random() < spam_rate / 3:
            spammer = f"s{rng.randrange(10**6):06d}@{rng.choice(['mail', 'promo', 'secure'])}.example.net"
            burst = [spammer] * rng.randint(0, 4)
            sender, spam = spammer, True
        else:
            sender, spam = rng.choice(customers), False
        body = _message_body(rng, spam, after_drift)
        yield {
            "event_id": f"msg-{i:07d}",
            "ts": iso(to_ms(START + timedelta(seconds=clock))),
            "sender": sender,
            "channel": rng.choice(["email", "chat", "form"] if not spam else ["email", "email", "form"]),
            "body": body,
            "label": spam,
        }


def _message_body(rng: random.Random, spam: bool, after_drift: bool) -> str:
    fill = {"n": rng.randrange(10_000, 99_999), "d": rng.randint(2, 21), "month": rng.choice(_MONTHS)}
    if spam and rng.random() < 0.85:
        first, second = rng.sample(_SPAM_AFTER if after_drift else _SPAM_BEFORE, 2)
        parts = [rng.choice(_TICKET_OPENERS), first.format(**fill) + ".", second.format(**fill).capitalize() + "."]
        parts.append(rng.choice(["Act now!", "Do not miss it.", "Reply STOP to opt out.", "Regards, the team."]))
        parts.append(f"Visit www.offer-{fill['n']}.example.net to continue, reference {fill['d']}-{fill['n']}.")
    else:
        first, second = rng.sample(_TICKET_TOPICS, 2)
        parts = [rng.choice(_TICKET_OPENERS), first.format(**fill).capitalize() + "."]
        if rng.random() < 0.7:
            parts.append(f"Also, {second.format(**fill)}.")
        if rng.random() < 0.1:  # genuine messages that sound like spam
            parts.append(rng.choice(["Is the free offer real?", "Please verify my account.", "Which invoice?"]))
        parts.append(rng.choice(_TICKET_CLOSERS))
        parts.append(f"Customer reference {fill['n']}, sent from my {rng.choice(['phone', 'laptop', 'tablet'])}.")
    return " ".join(parts)
