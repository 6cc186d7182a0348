"""eddy's main job: `python -m bytewax.run dataflows.main` (add `-r DIR -s SECONDS -b 0` for recovery).

Configuration comes from eddy.toml / EDDY_CONFIG and environment variables (see README). The broker and
topics are checked before the flow is built, so a misconfiguration fails in seconds with a clear message.
"""

from __future__ import annotations

import gc
import logging
import sys

from dataflows.broker.admin import BrokerError
from dataflows.flow.config import ConfigError, load_config
from dataflows.flow.fresh_start import StartOverError, check_fresh_start, has_saved_state
from dataflows.flow.logs import configure_logging
from dataflows.flow.recovery import RecoveryError, guard_recovery_dir, recovery_dir_from_argv
from dataflows.flow.shards import Splitter, shard_count, workers_from_argv
from dataflows.flow.warm_start import warm_start_checkpoint
from dataflows.flow.wiring import build_flow, check_inputs
from features import FeatureEngine, FeatureFileError

configure_logging()
log = logging.getLogger("eddy")


def _build():
    try:
        config = load_config()
        partitions = check_inputs(config)
        engine = FeatureEngine(config.sql_dir, config.fields)
        workers = workers_from_argv(sys.argv)
        shards = shard_count(config.flow.feature_shards, workers)
        guard_recovery_dir(sys.argv, shards)
        check_fresh_start(config, partitions, recovery_dir_from_argv(sys.argv))
        if not has_saved_state(recovery_dir_from_argv(sys.argv)):
            # Refused now, not in the first epoch; pinned in the recovery directory if there is one.
            warm_start_checkpoint(config, engine.features_version, state_dir=recovery_dir_from_argv(sys.argv))
    except (ConfigError, BrokerError, FeatureFileError, RecoveryError, StartOverError) as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    t = config.topics
    log.info(
        "eddy: %s -> %s; reading '%s' (%d partitions) and '%s' (%d) from %s; writing '%s', '%s', '%s'",
        config.source,
        config.flow.mode,
        t.events,
        partitions[t.events],
        t.labels,
        partitions[t.labels],
        config.bootstrap_servers,
        t.predictions,
        t.metrics,
        t.dead_letters,
    )
    log.info("Kafka clients connect with %s", config.kafka_security.describe())
    log.info(
        "features: %s, version %s (%d features); model: %s; %s",
        config.sql_dir,
        engine.features_version,
        len(engine.feature_names),
        config.model,
        "tailing the input" if config.tail else "stopping at the end of the input (EDDY_TAIL=false)",
    )
    log.info(
        "feature state in %s on %d worker(s): %s",
        "one shard" if shards == 1 else f"{shards} shards per entity family",
        workers,
        Splitter(config.sql_dir, config.fields, shards, workers=workers).describe(),
    )
    return build_flow(config, partitions, state_dir=recovery_dir_from_argv(sys.argv), workers=workers)


flow = _build()
# The imported libraries' objects make every full garbage collection a stall that shows in the latency p99;
# they live as long as the process, so the collector can stop looking at them.
gc.freeze()
# What the flow keeps for a while (the refit window's rows, events waiting for labels, all freed by reference
# counting) still makes frequent full collections. A tenth as often: the collector only finds reference
# cycles, which eddy's state does not make.
gc.set_threshold(*gc.get_threshold()[:2], gc.get_threshold()[2] * 10)
