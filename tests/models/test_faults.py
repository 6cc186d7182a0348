"""Worker and disk faults: a refit worker killed with SIGKILL, a model registry that cannot be written.

Tests run as root in CI, where a chmod'ed directory does not stop writes; the registry faults here fail for
root too: a registry path whose parent is a regular file (ENOTDIR), temporary files that are symbolic links
to /dev/full (every write fails with ENOSPC, as on a full disk), and a target name taken by a directory
(the rename fails with EISDIR after the temporary file is written).
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
from river import datasets

from models import refit
from models.ensemble import Ensemble
from models.registry import flush_writes

PHISHING = list(datasets.Phishing())
PARAMS = {"refit_every": 100, "window": 300, "lag": 30, "num_boost_round": 20}


def learn(model: Ensemble, events, scores: list | None = None) -> list[float]:
    scores = [] if scores is None else scores
    for x, y in events:
        scores.append(model.predict_proba_one_detailed(x).score)
        model.learn_one(x, y)
    return scores


def reference(events) -> tuple[list[float], list[dict]]:
    """Scores and refit records of the same events fitted synchronously, no worker involved."""
    model = Ensemble(**PARAMS, background=None)
    return learn(model, events), records(model)


def records(model: Ensemble) -> list[dict]:
    """The registry's records without their fit durations (wall-clock)."""
    return [{k: v for k, v in record.items() if k != "fit_seconds"} for record in model.registry.versions()]


def _until(condition, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.05)


def test_a_refit_worker_killed_mid_refit_is_replaced_and_the_flow_fits_that_refit_itself():
    events = PHISHING[:400]
    expected_scores, expected_records = reference(events)
    model = Ensemble(**PARAMS, background="process")
    pool = refit._pool()
    assert pool.submit(refit._ready).result(timeout=120)
    # The worker is kept busy so the refit waits in the pool behind this job: the kill cannot come too late.
    blocker = pool.submit(time.sleep, 600)
    scores = learn(model, events[:100])  # refit v1 starts at labelled event 100
    _until(lambda: len(pool._pending_work_items) >= 2, "refit v1 handed to the worker process")
    killed = list(pool._processes)
    assert killed, "the pool has no worker process"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(BrokenProcessPool):
        blocker.result(timeout=120)

    learn(model, events[100:], scores)  # v1 takes effect at 130; v2 and v3 go to a new worker

    assert scores == expected_scores
    assert records(model) == expected_records
    health = model.health()
    assert health["fitted_by_flow"] == {"timeout": 0, "worker_died": 1}
    assert health["accepted"] == 3 and health["last"]["version"] == 3
    replaced = refit._pool()
    assert replaced is not pool and not replaced._broken
    assert not set(replaced._processes) & set(killed)
    assert all(process.is_alive() for process in replaced._processes.values())


def test_a_refit_worker_killed_while_idle_is_replaced_before_the_next_refit():
    events = PHISHING[:400]
    expected_scores, expected_records = reference(events)
    model = Ensemble(**PARAMS, background="process")
    scores = learn(model, events[:150])  # v1 fitted in the worker and in effect
    pool = refit._pool()
    assert pool.submit(refit._ready).result(timeout=120)
    killed = list(pool._processes)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    _until(lambda: pool._broken, "the pool noticing its worker died")

    learn(model, events[150:], scores)

    assert scores == expected_scores
    assert records(model) == expected_records
    assert model.health()["fitted_by_flow"]["worker_died"] == 0
    assert refit._pool() is not pool and not set(refit._pool()._processes) & set(killed)


def _registry_run(registry_dir: Path) -> Ensemble:
    model = Ensemble(**PARAMS, background=None, registry_dir=str(registry_dir))
    learn(model, PHISHING[:400])
    flush_writes()
    return model


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp"))


def test_a_registry_under_a_regular_file_fails_every_write_and_the_model_goes_on(tmp_path):
    """A path whose parent is a file: what a read-only registry is to root, which chmod cannot give."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the registry's parent directory should be\n")
    expected_scores, expected_records = reference(PHISHING[:400])

    model = _registry_run(blocker / "registry")

    assert [r["version"] for r in model.registry.versions()] == [1, 2, 3]
    assert model.lightgbm_version == 3
    health = model.health()
    assert health["registry_write_failures"] == 3
    assert "NotADirectoryError" in health["registry_write_error"] or "FileExistsError" in health["registry_write_error"]
    assert blocker.read_text().startswith("a file")

    # The fault gone, the next write succeeds and the failure clears.
    blocker.unlink()
    learn(model, PHISHING[400:500])
    flush_writes()
    health = model.health()
    assert health["registry_write_failures"] == 3 and health["registry_write_error"] is None
    assert (blocker / "registry" / "v000004.json").exists()
    assert _leftovers(tmp_path) == []
    assert expected_records[0]["version"] == 1 and expected_scores


def test_a_full_disk_leaves_no_temporary_files_in_the_registry(tmp_path):
    """Each version's metadata goes to a link to /dev/full, where every write fails with ENOSPC, for root too;
    its model text, written first, is removed with it: a version is written whole or not at all."""
    registry = tmp_path / "registry"
    registry.mkdir()
    for version in (1, 2, 3):
        (registry / f"v{version:06d}.json.tmp").symlink_to("/dev/full")

    model = _registry_run(registry)

    health = model.health()
    assert health["registry_write_failures"] == 3
    assert "No space left on device" in health["registry_write_error"]
    assert _leftovers(tmp_path) == []
    assert sorted(p.name for p in registry.iterdir()) == []
    assert Path("/dev/full").is_char_device()


def test_a_write_that_fails_after_its_temporary_file_is_written_removes_it(tmp_path):
    """The metadata's name is taken by a directory: the temporary file is complete, the rename fails."""
    registry = tmp_path / "registry"
    (registry / "v000002.json").mkdir(parents=True)
    (registry / "v000002.json" / "keep").write_text("x")

    model = _registry_run(registry)

    health = model.health()
    assert health["registry_write_failures"] == 1
    assert health["registry_write_error"] is None  # v3 was written after v2 failed
    assert _leftovers(tmp_path) == []
    assert (registry / "v000003.json").is_file() and (registry / "v000001.json").is_file()
