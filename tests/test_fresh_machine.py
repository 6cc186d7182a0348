"""A fresh Debian machine: the README's two commands install the system packages they need.

Nothing is uninstalled here: each test runs `scripts/system-packages.sh` (and `scripts/task`) with a PATH of
its own, on which java, mvn and chromium are absent or stand-ins, `apt-get` is a stub that records what it
is asked, and `id` says whether we are root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "system-packages.sh"
TOOLS = ("bash", "sed", "head", "dirname", "cat", "mkdir", "touch", "sh")


class Machine:
    """A PATH with the basic tools, stubs for `apt-get` and `id`, and whatever a test puts on it."""

    def __init__(self, root: Path, uid: int):
        self.bin = root / "bin"
        self.bin.mkdir()
        self.calls = root / "apt-get.calls"
        self.cache = root / "cache"
        self.venv = root / "venv"  # absent: the venv module is needed unless `python3` has it
        for tool in TOOLS:
            (self.bin / tool).symlink_to(shutil.which(tool))
        self.stub("apt-get", f'echo "apt-get $*" >> {self.calls}')
        self.stub("id", f'[ "$1" = "-u" ] && echo {uid}')
        self.stub("python3", f'exec {sys.executable} "$@"')

    def stub(self, name: str, body: str) -> None:
        (self.bin / name).write_text(f"#!/bin/bash\n{body}\n")
        (self.bin / name).chmod(0o755)

    def remove(self, name: str) -> None:
        (self.bin / name).unlink()

    def java(self, major: int) -> None:
        self.stub("java", f"echo 'openjdk version \"{major}.0.2\" 2024-01-16' >&2")

    def env(self) -> dict[str, str]:
        return {
            "PATH": str(self.bin),
            "HOME": str(self.bin.parent),
            "EDDY_CACHE": str(self.cache),
            "EDDY_VENV": str(self.venv),
        }

    def run(self, *tasks: str, command: Path = SCRIPT) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin / "bash"), str(command), *tasks], env=self.env(), capture_output=True, text=True, timeout=60
        )

    def apt_calls(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


@pytest.fixture
def root(tmp_path: Path) -> Machine:
    return Machine(tmp_path, uid=0)


@pytest.fixture
def user(tmp_path: Path) -> Machine:
    return Machine(tmp_path, uid=1000)


def test_as_root_a_bare_machine_gets_everything_the_tests_need(root: Machine):
    root.stub("python3", "exit 1")  # no venv module (Debian's python3 without python3-venv)
    result = root.run("test")
    assert result.returncode == 0, result.stderr
    assert root.apt_calls() == [
        "apt-get update -qq",
        "apt-get install -y -qq python3-venv default-jre-headless maven chromium openssl",
    ]
    assert result.stdout.startswith("eddy: installing python3-venv default-jre-headless maven chromium openssl with")


def test_as_a_user_one_command_is_printed_and_nothing_is_run(user: Machine):
    result = user.run("test")
    assert result.returncode == 1
    assert user.apt_calls() == []
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "eddy: error: 'test' needs Java 17 or newer, Maven (once, to fetch Kafka from Maven Central), "
        "Chromium (the dashboard's browser tests), OpenSSL (the TLS tests' certificates); install them with this "
        "command, then run it again:"
    )
    assert lines[1:] == [
        "  sudo sh -c 'apt-get update && apt-get install -y default-jre-headless maven chromium openssl'"
    ]


def test_a_machine_with_everything_installs_nothing(root: Machine):
    root.java(21)
    root.stub("mvn", "exit 0")
    root.stub("chromium", "exit 0")
    root.stub("openssl", "exit 0")
    result = root.run("test")
    assert (result.returncode, result.stdout, result.stderr, root.apt_calls()) == (0, "", "", [])


def test_an_old_java_is_replaced_and_said(user: Machine):
    user.java(11)
    user.stub("mvn", "exit 0")
    result = user.run("demo")
    assert result.returncode == 1
    assert "needs Java 17 or newer (this one is 11);" in result.stderr
    assert "apt-get install -y default-jre-headless'" in result.stderr


def test_the_demo_needs_no_browser_and_cached_jars_need_no_maven(root: Machine):
    jar = root.cache / "kafka-4.1.1" / "libs" / "kafka_2.13-4.1.1.jar"
    jar.parent.mkdir(parents=True)
    jar.write_bytes(b"")
    result = root.run("demo")
    assert result.returncode == 0, result.stderr
    assert root.apt_calls()[-1] == "apt-get install -y -qq default-jre-headless"


def test_tasks_without_the_broker_need_nothing_but_python(root: Machine):
    for task in ("lint", "replay", "--list", "report"):
        assert root.run(task).returncode == 0
    assert root.apt_calls() == []


def test_not_debian_says_what_is_missing(user: Machine):
    user.remove("apt-get")
    result = user.run("test")
    assert result.returncode == 1
    assert "this is not a Debian-like system (no apt-get)" in result.stderr
    assert "Java 17 or newer" in result.stderr and "Chromium" in result.stderr


def test_the_readme_commands_check_first(user: Machine):
    """`scripts/task` runs the check before it makes .venv or runs anything."""
    venv = REPO / ".venv"
    existed = venv.exists()
    result = user.run("test", command=REPO / "scripts" / "task")
    assert result.returncode == 1
    assert "apt-get install -y default-jre-headless maven chromium openssl'" in result.stderr
    assert venv.exists() == existed
    assert "creating the virtualenv" not in result.stdout


def test_ci_runs_the_readmes_test_command():
    readme = (REPO / "README.md").read_text()
    assert "scripts/task test" in readme and "scripts/task demo" in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert "\nscripts/task test\n" in ci


def test_help(root: Machine):
    result = root.run("--help")
    assert result.returncode == 0 and "scripts/system-packages.sh TASK" in result.stdout


def test_skipping_the_check_is_a_choice(user: Machine):
    env = {**user.env(), "EDDY_SYSTEM_PACKAGES": "skip"}
    result = subprocess.run(["bash", str(SCRIPT), "test"], env=env, capture_output=True, text=True, timeout=60)
    assert (result.returncode, user.apt_calls()) == (0, [])


def test_the_script_is_executable():
    assert os.access(SCRIPT, os.X_OK)


def test_the_task_runners_help_is_not_taken_for_the_checks(root: Machine):
    """`scripts/task --help` passes `-- --help` on: a task command line, not a request for this script's help."""
    result = root.run("--", "--help")
    assert (result.returncode, result.stdout, root.apt_calls()) == (0, "", [])
