"""An engine over one family of groups (the groups that share an entity), fed the events of any set of that
family's entities, gives exactly the whole engine's features for those groups and events: what lets the
dataflow cut the feature state by entity over its workers (`dataflows.flow.shards`)."""

from __future__ import annotations

import copy
import math
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import FeatureEngine
from features.catalog import family_of
from tests.features.conftest import FIELDS, REPO, USER_COUNTS

# A group over every event (no entity), and one over a pair of columns that runs as written (no fast plan).
EVERYONE = """\
-- group: everyone
-- entity: none
-- horizon: 10s
SELECT event_id, count(*) OVER (ORDER BY ts RANGE BETWEEN INTERVAL 10 SECONDS PRECEDING AND CURRENT ROW) AS all_n_10s
FROM events
"""

PAIR = """\
-- group: pair
-- entity: merchant_id, user_id
-- horizon: 10s
SELECT
    event_id,
    count(*) OVER w AS pair_n_10s,
    stddev_samp(amount) OVER w AS pair_std_10s,
    CASE WHEN ts - lag(ts) OVER previous <= INTERVAL 10 SECONDS
         THEN amount - lag(amount) OVER previous END AS pair_change
FROM events
WINDOW previous AS (PARTITION BY user_id, merchant_id ORDER BY ts, event_id),
    w AS (PARTITION BY user_id, merchant_id ORDER BY ts RANGE BETWEEN INTERVAL 10 SECONDS PRECEDING AND CURRENT ROW)
"""


@pytest.fixture(scope="module")
def family_sql(tmp_path_factory):
    """The shipped transaction groups (segment plans) with the user's and the merchant's groups interleaved by
    file name, a window-plan user group, a pair group and a group with no entity."""
    folder = tmp_path_factory.mktemp("families")
    shipped = REPO / "sql" / "transactions"
    for i, name in enumerate(["user_day", "merchant_day", "user_short", "merchant_short"]):
        (folder / f"{i}_{name}.sql").write_text((shipped / f"{name}.sql").read_text())
    (folder / "4_user_counts.sql").write_text(USER_COUNTS)
    (folder / "5_pair.sql").write_text(PAIR)
    (folder / "6_everyone.sql").write_text(EVERYONE)
    return folder


def test_a_catalog_falls_into_families_by_entity(family_sql):
    catalog = FeatureEngine(family_sql, FIELDS).catalog
    assert catalog.families == {
        "user_id": ("user_id",),
        "merchant_id": ("merchant_id",),
        "merchant_id,user_id": ("merchant_id", "user_id"),
        "none": (),
    }
    user = FeatureEngine(family_sql, FIELDS, family="user_id")
    assert [g.name for g in user.catalog.groups] == ["user_day", "user_short", "user_counts"]
    assert user.features_version == catalog.version
    assert family_of(("user_id", "merchant_id")) == family_of(("merchant_id", "user_id"))


@st.composite
def streams(draw):
    n = draw(st.integers(1, 80))
    steps = st.sampled_from([0, 0, 1, 700, 1_000, 4_000, 11_000, 600_000, 3_600_000])
    events, ts = [], 1_767_225_600_000
    for i, gap in enumerate(draw(st.lists(steps, min_size=n, max_size=n))):
        ts += gap
        events.append(
            {
                "event_id": f"e{draw(st.integers(0, 999)):03d}-{i}",
                "ts": ts,
                "user_id": draw(st.sampled_from(["a", "b", "c", "d", None])),
                "merchant_id": draw(st.sampled_from(["m", "n", "o"])),
                "amount": draw(st.one_of(st.none(), st.sampled_from([1.0, 2.5, 1e6]), st.floats(-1e3, 1e3))),
                "category": "grocery",
                "country": "FR",
            }
        )
    # Cut where ts moves on, as the ordering step releases: every event of one ts in one release.
    boundaries = [i for i in range(1, n) if events[i]["ts"] > events[i - 1]["ts"]]
    cuts = sorted(set(draw(st.lists(st.sampled_from(boundaries), max_size=8)))) if boundaries else []
    batches = [events[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    shards = draw(st.integers(1, 3))
    # Any cut of the entities into shards: each distinct entity value (tuple) drawn a shard.
    salt = draw(st.integers(0, 2**16))
    return batches, shards, salt


def identical(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def fresh_engine(family_sql):
    """A new engine (whole: family None) without loading and checking the folder again for each example."""
    prototypes: dict[str | None, FeatureEngine] = {}

    def make(family: str | None = None) -> FeatureEngine:
        if family not in prototypes:
            prototypes[family] = FeatureEngine(family_sql, FIELDS, family=family)
        return copy.deepcopy(prototypes[family])

    return make


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=streams())
def test_family_engines_over_any_cut_of_the_entities_give_the_whole_engines_features(fresh_engine, scenario):
    batches, shards, salt = scenario
    whole = fresh_engine()
    want: dict[str, dict] = {}
    for batch in batches:
        out = whole.push(batch)
        assert len(out) == len(batch)
        for event, features in out:
            want[event["event_id"]] = features
    families = whole.catalog.families
    got: dict[str, dict] = {event_id: {} for event_id in want}
    for family, columns in families.items():
        n = 1 if not columns else shards
        engines = [fresh_engine(family) for _ in range(n)]

        def shard(event: dict, columns=columns, n=n) -> int:
            return zlib.crc32(repr((salt, *(event[c] for c in columns))).encode()) % n

        for batch in batches:
            for s, engine in enumerate(engines):
                part = [e for e in batch if shard(e) == s]
                if not part:
                    continue
                out = engine.push(part)
                assert len(out) == len(part)
                assert out.features_version == whole.features_version
                for event, features in out:
                    assert features.keys() == set(engine.feature_names)
                    got[event["event_id"]].update(features)
    for event_id, features in want.items():
        assert list(got[event_id]) == [n for family in families for n in whole.catalog.subset(family).feature_names]
        differing = {k: (got[event_id][k], v) for k, v in features.items() if not identical(got[event_id][k], v)}
        assert not differing, (event_id, differing)


def test_a_family_engine_reloads_its_own_groups_under_the_whole_folders_version(family_sql, tmp_path):
    folder = tmp_path / "sql"
    folder.mkdir()
    for path in family_sql.glob("*.sql"):
        (folder / path.name).write_text(path.read_text())
    engine = FeatureEngine(folder, FIELDS, family="merchant_id")
    before = engine.features_version
    text = (folder / "4_user_counts.sql").read_text()
    (folder / "4_user_counts.sql").write_text(text.replace("sum_1h", "total_1h"))
    report = engine.reload()
    assert report.changed and report.features_version != before
    assert engine.features_version == FeatureEngine(folder, FIELDS).features_version
    assert [g.name for g in engine.catalog.groups] == ["merchant_day", "merchant_short"]
