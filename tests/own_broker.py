"""A local broker of a test's own, on free ports with its own home, for tests that stop the broker: never the
shared one the other tests use."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnBroker:
    """A broker of a test's own, started and stopped with `scripts/kafka.sh`."""

    def __init__(self, home: Path):
        port, controller = free_port(), free_port()
        self.bootstrap = f"localhost:{port}"
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(controller),
            "EDDY_KAFKA_HOME": str(home),
        }

    def _script(self, command: str) -> None:
        result = subprocess.run(
            [str(REPO / "scripts" / "kafka.sh"), command], env=self.env, capture_output=True, text=True, timeout=180
        )
        assert result.returncode == 0, f"kafka.sh {command} failed:\n{result.stdout}\n{result.stderr}"

    def up(self) -> None:
        self._script("up")

    def down(self) -> None:
        self._script("down")
