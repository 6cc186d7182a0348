"""librdkafka's log lines through Python logging, each kind at most once per `EVERY_S`.

With the broker gone, every Kafka client eddy makes (a consumer per input partition, a producer per output,
the lag probe) logs a failed connection attempt every few tens of milliseconds on stderr: over a hundred
lines a second that bury eddy's own message about the broker. Given as a client's `logger`, `client_logger()`
passes the first line of each kind (facility and text, client names and numbers aside) and then one every
`EVERY_S` seconds with the count of those held back.
"""

from __future__ import annotations

import logging
import re
import time

EVERY_S = 30.0
LOGGER = "eddy.kafka"


class _OncePerKind(logging.Filter):
    def __init__(self, every_s: float = EVERY_S):
        super().__init__()
        self.every_s = every_s
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = _kind(record)
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last[0] < self.every_s:
            self._last[kind] = (last[0], last[1] + 1)
            return False
        held = last[1] if last else 0
        self._last[kind] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {now - last[0]:.0f} s)"
        return True


def _kind(record: logging.LogRecord) -> str:
    """The facility and message with client names, numbers and addresses' digits blanked."""
    args = record.args if isinstance(record.args, tuple) else ()
    text = " ".join(str(a) for a in args[:1] + args[2:]) if len(args) >= 3 else record.getMessage()
    return re.sub(r"\d+", "#", text)


def client_logger() -> logging.Logger:
    """The logger to give every Kafka client as its `logger` setting."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, _OncePerKind) for f in logger.filters):
        logger.addFilter(_OncePerKind())
    return logger
