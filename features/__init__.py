"""eddy's SQL feature engine: feature files in `sql/`, computed with DuckDB over event-time windows.

Knows nothing of Kafka or Bytewax. The same SQL gives the same numbers live (`FeatureEngine`) and offline
(`features.backfill.backfill`), with no look into the future.
"""

from features.engine import FeatureBatch, FeatureEngine, ReloadReport
from features.spec import FeatureFileError, FeatureGroup

__all__ = [
    "FeatureBatch",
    "FeatureEngine",
    "FeatureFileError",
    "FeatureGroup",
    "ReloadReport",
]
