"""Refuse a start from nothing over outputs that already hold predictions: it would publish them all again.

A run without saved state (no recovery directory, or one with no snapshot yet) reads its input topics from
the beginning. If the predictions topic already holds predictions, an earlier run scored that input, and
another pass would append a second prediction for every event it read. eddy stops instead and says how to
continue that run (its recovery directory) or to start over on purpose (`[flow] start_over`,
EDDY_START_OVER=true). It does not skip ahead to where the outputs stop: without the state of the run that
wrote them, the model would start cold mid-stream and its predictions would silently differ.
"""

from __future__ import annotations

from pathlib import Path

from dataflows.broker.offsets import message_count
from dataflows.flow.config import Config
from dataflows.flow.recovery import saved_steps


class StartOverError(RuntimeError):
    """This run would publish again predictions that its outputs already hold."""


def has_saved_state(recovery_dir: Path | None) -> bool:
    return recovery_dir is not None and any(recovery_dir.glob("part-*.sqlite3")) and bool(saved_steps(recovery_dir))


def check_fresh_start(config: Config, partitions: dict[str, int], recovery_dir: Path | None) -> None:
    """StartOverError if this run has no state to resume from and the predictions topic is not empty."""
    if config.flow.start_over or has_saved_state(recovery_dir):
        return
    t = config.topics
    held = message_count(
        config.bootstrap_servers, t.predictions, partitions[t.predictions], security=config.kafka_security
    )
    if not held:
        return
    where = f"recovery directory {recovery_dir} holds no snapshot yet" if recovery_dir else "no recovery directory"
    raise StartOverError(
        f"topic '{t.predictions}' already holds {held:,} predictions, and this run has no state to resume "
        f"from ({where}): it would read '{t.events}' from its beginning and publish every prediction again. "
        "To continue the run that wrote them, start it with its recovery directory (`-r DIR -s 10 -b 0`, as "
        "`task run:recover` does). To score the input again from the start and append a new set of "
        "predictions, set EDDY_START_OVER=true (or `start_over = true` in eddy.toml's [flow]); to start clean, "
        "empty the topics first with `python -m dataflows.tools.topics --reset`."
    )
