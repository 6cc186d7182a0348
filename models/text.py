"""Free-text features: River's own online extractors, with every term hashed into a fixed number of buckets.

A text field goes through River's `feature_extraction.TFIDF` (or `BagOfWords`): strip accents, lowercase,
tokenize with a regular expression, n-grams. One step is added after the n-grams: each term becomes the bucket
`crc32(UTF-8 of the term, n-grams joined by a space) mod buckets`, named `<field>#<bucket>`. The hashing trick
bounds what the stream can grow: TF-IDF's document frequencies, and the weights a linear model keeps per
feature, hold at most `buckets` entries per field however many distinct words a month of messages brings, and
the vocabulary needs no eviction rule. crc32 is the same number in every process (Python's `hash` of a string
is not), so scores do not depend on which process computed them.

LightGBM sees the same text as `lightgbm_buckets` columns of term counts (`hashed_counts`), fewer than River's
buckets because a tree model pays for every column of every row it trains on.

>>> vectorizer = TextSettings(buckets=16).vectorizer("body")
>>> vectorizer.learn_one({"body": "Refund now, refund!"})
>>> vectorizer.transform_one({"body": "refund"})
{'body#8': 1.0}
"""

from __future__ import annotations

import functools
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from river import base, feature_extraction

TOKEN_PATTERN = r"(?u)\b\w[\w\-]+\b"
"""River's own default: words of two or more letters, digits or underscores (hyphens inside)."""

METHODS = ("tfidf", "bag_of_words")


def hash_terms(terms: Iterable[str | tuple[str, ...]], prefix: str, buckets: int) -> list[str]:
    """Each term (an n-gram is a tuple of words) as the name of its bucket."""
    crc32, names = zlib.crc32, _bucket_names(prefix, buckets)
    # surrogatepass: a lone surrogate (a broken UTF-16 pair that JSON can carry as \\ud800) hashes too
    return [
        names[crc32((term if type(term) is str else " ".join(term)).encode("utf-8", "surrogatepass")) % buckets]
        for term in terms
    ]


@functools.lru_cache(maxsize=64)
def _bucket_names(prefix: str, buckets: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(buckets))


class _LastText:
    """Remembers the terms of the last text: a River pipeline processes each event's text three times (to
    score it, then to learn it and transform it), and the terms are a function of the text alone. Not state:
    a copy or a snapshot starts without it."""

    _last_terms: tuple[str, list] | None = None

    def process_text(self, x):
        text = x[self.on]
        last = self._last_terms
        if last is not None and last[0] == text:
            return last[1]
        terms = super().process_text(x)
        self._last_terms = (text, terms)
        return terms

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_last_terms"}


class _HashedTerms(_LastText):
    """River's extractor on the field `on`, its terms hashed into `buckets` (see the module's docstring)."""

    def __init__(
        self,
        on: str,
        buckets: int = 4096,
        ngram_range: tuple[int, int] = (1, 1),
        lowercase: bool = True,
        strip_accents: bool = True,
        tokenizer_pattern: str = TOKEN_PATTERN,
    ):
        super().__init__(
            on=on,
            strip_accents=strip_accents,
            lowercase=lowercase,
            tokenizer_pattern=tokenizer_pattern,
            ngram_range=tuple(ngram_range),
        )
        self.buckets = buckets
        self.processing_steps.append(functools.partial(hash_terms, prefix=f"{on}#", buckets=buckets))


class HashedBagOfWords(_HashedTerms, feature_extraction.BagOfWords):
    """River's `BagOfWords` on the field `on`, its terms hashed into `buckets`: term counts."""


class HashedTFIDF(_HashedTerms, feature_extraction.TFIDF):
    """River's `TFIDF` (L2-normalised) on the field `on`, its terms hashed into `buckets`: its document
    frequencies hold at most `buckets` counts."""


@dataclass(frozen=True)
class TextSettings:
    """How text fields become features: `[text]` in eddy.toml."""

    method: str = "tfidf"
    buckets: int = 4096
    ngram_max: int = 1
    lowercase: bool = True
    strip_accents: bool = True
    token_pattern: str = TOKEN_PATTERN
    lightgbm_buckets: int = 256

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method = {self.method!r}; use one of {', '.join(METHODS)}")
        for name in ("buckets", "ngram_max", "lightgbm_buckets"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in ("lowercase", "strip_accents"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        try:
            re.compile(self.token_pattern)
        except (re.error, TypeError) as exc:
            raise ValueError(f"token_pattern {self.token_pattern!r} is not a regular expression: {exc}") from None

    @classmethod
    def from_table(cls, table: Mapping) -> TextSettings:
        """From a TOML table; a ValueError names an unknown key or a bad value."""
        known = [f.name for f in fields(cls)]
        unknown = set(table) - set(known)
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)}; known: {', '.join(known)}")
        return cls(**table)

    def vectorizer(self, on: str) -> HashedBagOfWords | HashedTFIDF:
        """A fresh extractor for the text field `on`."""
        kind = HashedTFIDF if self.method == "tfidf" else HashedBagOfWords
        return kind(on, self.buckets, (1, self.ngram_max), self.lowercase, self.strip_accents, self.token_pattern)

    def hashed_counts(self, on: str, text: str) -> dict[str, int]:
        """The text's term counts in `lightgbm_buckets` columns named `<on>#<bucket>` (the same tokens and
        n-grams as River's extractor)."""
        extractor = _counter(
            on, self.lightgbm_buckets, self.ngram_max, self.lowercase, self.strip_accents, self.token_pattern
        )
        return dict(Counter(extractor.process_text({on: text})))


@functools.lru_cache(maxsize=64)
def _counter(on: str, buckets: int, ngram_max: int, lowercase: bool, strip: bool, pattern: str) -> HashedBagOfWords:
    return HashedBagOfWords(on, buckets, (1, ngram_max), lowercase, strip, pattern)


class HashedText:
    """A row as LightGBM sees it: each text field replaced by its term counts in `lightgbm_buckets` columns
    (`TextSettings.hashed_counts`), the other features unchanged. A bucket the text has no term in is absent,
    which LightGBM reads as missing.

    >>> HashedText(("body",), TextSettings(lightgbm_buckets=8))({"body": "win win cash", "n": 3})
    {'n': 3, 'body#6': 2, 'body#1': 1}
    """

    MEMO = 4_096
    """Texts whose counts are remembered: the ensemble asks for a micro-batch's rows to score them, then for
    each row again as it learns it."""

    def __init__(self, fields: tuple[str, ...], settings: TextSettings):
        self.fields = tuple(fields)
        self.settings = settings

    def __call__(self, x: Mapping) -> dict:
        out = {k: v for k, v in x.items() if k not in self.fields}
        for name in self.fields:
            text = x.get(name)
            if type(text) is str:
                out.update(self._counts(name, text))
        return out

    def _counts(self, name: str, text: str) -> dict[str, int]:
        memo = self.__dict__.setdefault("_memo", {})
        counts = memo.get((name, text))
        if counts is None:
            if len(memo) >= self.MEMO:
                memo.clear()
            counts = memo[name, text] = self.settings.hashed_counts(name, text)
        return counts

    def __getstate__(self) -> dict:
        return {"fields": self.fields, "settings": self.settings}


class TextColumns(base.Transformer):
    """Each text field of `x` replaced by its extractor's features; the other features pass unchanged.

    `learn_one` teaches each extractor its field's text (TF-IDF counts document frequencies); a field that is
    absent, or not a string, is left to the other steps."""

    def __init__(self, extractors: dict[str, base.Transformer]):
        self.extractors = extractors

    def learn_one(self, x: dict) -> None:
        for name, extractor in self.extractors.items():
            if type(x.get(name)) is str:
                extractor.learn_one(x)

    def transform_one(self, x: dict) -> dict:
        out = self.others(x)
        out.update(self.features(x))
        return out

    def others(self, x: dict) -> dict:
        """The features of `x` that are not text fields."""
        return {k: v for k, v in x.items() if k not in self.extractors}

    def features(self, x: dict) -> dict:
        """The text fields' features."""
        out: dict = {}
        for name, extractor in self.extractors.items():
            if type(x.get(name)) is str:
                out.update(extractor.transform_one(x))
        return out
