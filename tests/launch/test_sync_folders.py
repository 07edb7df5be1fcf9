"""harness.launch.sync's bookkeeping of offline W&B folders, on hand-made folders (no W&B needed).

The uploads themselves are tested with the real client in tests/launch/test_sync.py.
"""

from __future__ import annotations

from pathlib import Path

from harness.launch import sync

HEADER = b":W&B\x00\x01\x00"  # what a .wandb file holds before its first record (7 bytes)


def offline_folder(root: Path, sweep_id: str, run_id: str, started: str, data: bytes = HEADER + b"records") -> Path:
    folder = root / sweep_id / run_id / "wandb" / f"offline-run-{started}-{run_id}"
    folder.mkdir(parents=True)
    sync.wandb_file(folder).write_bytes(data)
    return folder


def test_a_runs_folders_are_grouped_by_id_in_start_order_and_online_folders_left_out(tmp_path):
    later = offline_folder(tmp_path, "local-a", "r1", "20261202_100000")
    earlier = offline_folder(tmp_path, "local-a", "r1", "20261202_090000")
    other = offline_folder(tmp_path, "local-a", "r2", "20261202_093000")
    online = tmp_path / "local-a" / "r3" / "wandb" / "run-20261202_093000-r3"
    online.mkdir(parents=True)
    offline_folder(tmp_path, "local-b", "r9", "20261202_093000")  # another sweep
    assert sync.offline_folders(tmp_path, "local-a") == {"r1": [earlier, later], "r2": [other]}


def test_folders_to_sync_skips_synced_and_header_only_folders(tmp_path):
    pending = offline_folder(tmp_path, "local-a", "r1", "20261202_090000")
    done = offline_folder(tmp_path, "local-a", "r2", "20261202_090000")
    sync.mark_synced(done)
    empty = offline_folder(tmp_path, "local-a", "r3", "20261202_090000", data=HEADER)
    assert sync.is_synced(done) and not sync.is_synced(pending)
    assert sync.folders_to_sync(tmp_path, "local-a") == ([pending], [empty])


def test_a_superseded_header_only_folder_is_passed_over_and_the_next_waits_its_turn(tmp_path):
    """A process killed before writing anything, then resumed: nothing of the first folder to upload.
    With no sync process allowed (max_processes=0) the second folder is left waiting, not skipped."""
    dead = offline_folder(tmp_path, "local-a", "r1", "20261202_090000", data=HEADER)
    resumed = offline_folder(tmp_path, "local-a", "r1", "20261202_100000")
    syncer = sync.LiveSyncer(tmp_path, "local-a", stall_s=0.0, max_processes=0, echo=lambda line: None)
    syncer.step()
    assert syncer.folders[dead].done
    assert not syncer.folders[resumed].done and syncer.folders[resumed].process is None
    assert syncer.started == 0


def test_a_growing_header_only_folder_is_waited_for(tmp_path):
    """The newest folder of a run is being written: header-only means 'nothing flushed yet', not 'dead'."""
    current = offline_folder(tmp_path, "local-a", "r1", "20261202_090000", data=HEADER)
    syncer = sync.LiveSyncer(tmp_path, "local-a", stall_s=0.0, echo=lambda line: None)
    syncer.step()
    assert not syncer.folders[current].done and syncer.started == 0


def test_the_service_probe_says_no_for_a_closed_port():
    assert sync.service_reachable("http://127.0.0.1:9", timeout_s=2) is False


def test_the_service_probe_follows_the_fake_service_up_and_down(wandb_backend):
    assert sync.service_reachable(wandb_backend.url) is True
    wandb_backend.outage = True  # answers 503 to everything
    assert sync.service_reachable(wandb_backend.url) is False
    wandb_backend.outage = False
    assert sync.service_reachable() is True  # WANDB_BASE_URL, as the sync processes see it


def test_a_sync_that_keeps_failing_after_its_writer_is_gone_is_given_up_not_waited_for(tmp_path, wandb_backend):
    """The launcher's `close` must not wait out its grace on a folder that cannot be uploaded live. The
    sync program here always exits 1 (a stand-in for `wandb beta sync` failing on a file, which the real
    client cannot be made to do on purpose); the service (the fake) answers, the writers are gone, and a
    back-off of 100 s would outlast the 60 s grace: each folder is tried 3 times, then given up, unmarked,
    and close says how to upload them later."""
    failing = tmp_path / "failing-python"
    failing.write_text("#!/bin/sh\nexit 1\n")
    failing.chmod(0o755)
    first = offline_folder(tmp_path, "local-a", "r1", "20261202_090000")
    second = offline_folder(tmp_path, "local-a", "r1", "20261202_100000")
    said: list[str] = []
    syncer = sync.LiveSyncer(tmp_path, "local-a", python=str(failing), poll_s=0.05, backoff_s=100.0, stall_s=0.2,
                             echo=said.append).start()
    assert syncer.close(timeout_s=60) is False
    for folder in (first, second):
        assert syncer.folders[folder].given_up and syncer.folders[folder].failures == 3
        assert not sync.is_synced(folder)  # left for `harness sync`
    assert syncer.started == 6
    assert sum("gave up the live sync" in line for line in said) == 2
    assert any("2 folder(s) not uploaded yet: `harness sync local-a" in line for line in said), said
