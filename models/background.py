"""One named daemon thread that runs jobs in the order they were handed to it: work the scoring thread hands off.

>>> done = []
>>> worker = SerialWorker("example")
>>> for i in range(3):
...     worker.submit(lambda i=i: done.append(i))
>>> worker.join()
>>> done
[0, 1, 2]
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class SerialWorker:
    """Started on the first `submit`, so that importing a module that holds one starts no thread. A job that
    raises is logged and the worker lives on: a dead one would leave every later `join` waiting."""

    def __init__(self, name: str):
        self.name = name
        self._jobs: queue.Queue[Callable[[], None]] | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._jobs is None:
                self._jobs = queue.Queue()
                threading.Thread(target=self._run, args=(self._jobs,), name=self.name, daemon=True).start()
        self._jobs.put(job)

    def join(self) -> None:
        """Wait until every job submitted so far has run."""
        if self._jobs is not None:
            self._jobs.join()

    def _run(self, jobs: queue.Queue[Callable[[], None]]) -> None:
        while True:
            job = jobs.get()
            try:
                job()
            except Exception:
                log.exception("%s: a background job failed", self.name)
            finally:
                jobs.task_done()
