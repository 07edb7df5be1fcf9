"""The run-folder lease (harness/run/lease.py): one holder at a time, broken only when provably stale."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest

from harness.run import lease


def _write(run_dir, **changes) -> None:
    holder = {"token": "abc", "host": "othernode", "pid": 1234, "pid_start": "1", "boot_id": "x",
              "started": time.time(), "renewed": time.time(), "ttl_s": 60.0, **changes}
    (run_dir / lease.LEASE_FILE).write_text(json.dumps(holder))


def test_one_holder_at_a_time_and_release_frees_it(tmp_path):
    first = lease.Lease.acquire(tmp_path)
    with pytest.raises(lease.LeaseHeld, match=f"in use by pid {os.getpid()} on") as held:
        lease.Lease.acquire(tmp_path)
    assert held.value.exit_code == lease.EXIT_OWNED == 75
    assert lease.live_holder(tmp_path).token == first.holder.token
    first.check()
    first.release()
    assert lease.read(tmp_path) is None
    with lease.Lease.acquire(tmp_path) as second:
        assert second.broke is None
    assert not (tmp_path / lease.MUTEX).exists()


def test_a_dead_holder_on_this_host_is_broken_at_once(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import sys; from harness.run import lease; "
                              "lease.Lease.acquire(sys.argv[1]); print('held', flush=True); import time; time.sleep(60)",
                              str(tmp_path)], stdout=subprocess.PIPE, text=True, env={**os.environ})
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(lease.LeaseHeld):
        lease.Lease.acquire(tmp_path)
    child.kill()
    child.wait()  # gone (and reaped): nothing can renew the lease any more
    taken = lease.Lease.acquire(tmp_path)
    assert taken.broke and f"pid {child.pid}" in taken.broke and "is gone" in taken.broke
    taken.release()


def test_the_journal_records_each_acquisition_release_and_broken_lease_in_order(tmp_path):
    first = lease.Lease.acquire(tmp_path)
    with pytest.raises(lease.LeaseHeld):
        lease.Lease.acquire(tmp_path)  # refused: not an acquisition, nothing journalled
    first.release()
    first.release()  # no longer ours: no second release row
    child = subprocess.Popen([sys.executable, "-c", "import sys; from harness.run import lease; "
                              "lease.Lease.acquire(sys.argv[1]); print('held', flush=True); import time; time.sleep(60)",
                              str(tmp_path)], stdout=subprocess.PIPE, text=True, env={**os.environ})
    assert child.stdout.readline().strip() == "held"
    child.kill()
    child.wait()
    second = lease.Lease.acquire(tmp_path)
    second.release()
    rows = lease.read_journal(tmp_path)
    assert [(row["event"], row["pid"]) for row in rows] == [
        ("acquired", os.getpid()), ("released", os.getpid()), ("acquired", child.pid),  # killed: no release
        ("acquired", os.getpid()), ("released", os.getpid())]
    assert rows[0]["token"] == rows[1]["token"] == first.holder.token and rows[0]["previous"] is None
    assert rows[3]["previous"] == rows[2]["token"] and "is gone" in rows[3]["broke"]
    assert [row["time"] for row in rows] == sorted(row["time"] for row in rows)


def test_a_reused_pid_does_not_keep_a_lease(tmp_path):
    # Our own pid, but another start time: the process that took the lease is gone.
    mine = lease.Lease.acquire(tmp_path)
    mine._stop.set()
    stale = dataclasses.replace(mine.holder, token="old", pid_start="1")
    (tmp_path / lease.LEASE_FILE).write_text(json.dumps(dataclasses.asdict(stale)))
    assert lease.holder_process_alive(stale) is False
    assert lease.Lease.acquire(tmp_path).broke


def test_another_hosts_lease_holds_until_ttl_plus_skew_margin(tmp_path):
    _write(tmp_path, renewed=time.time() - 80)  # late, but within ttl 60 + skew 30
    os.utime(tmp_path / lease.LEASE_FILE, (time.time() - 80, time.time() - 80))
    with pytest.raises(lease.LeaseHeld, match="othernode"):
        lease.Lease.acquire(tmp_path, skew_s=30)
    assert lease.live_holder(tmp_path, skew_s=30).host == "othernode"
    # The other host's clock runs 100 s ahead: its stamp says "just now", the file is 95 s old by the
    # filesystem's clock, so by this host's clock alone it would look alive: it is not judged stale
    # unless both clocks agree it is; and the reverse (stamp old, file fresh) holds it too.
    _write(tmp_path, renewed=time.time() - 200)
    with pytest.raises(lease.LeaseHeld):
        lease.Lease.acquire(tmp_path, skew_s=30)  # file mtime is fresh: still held
    os.utime(tmp_path / lease.LEASE_FILE, (time.time() - 95, time.time() - 95))
    taken = lease.Lease.acquire(tmp_path, skew_s=30)
    assert "not renewed for" in taken.broke


def test_renewal_keeps_it_fresh_and_a_replaced_lease_is_lost(tmp_path):
    mine = lease.Lease.acquire(tmp_path, ttl_s=0.3).start_renewing(every_s=0.05)
    first = lease.read(tmp_path).renewed
    deadline = time.monotonic() + 10
    while lease.read(tmp_path).renewed == first and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lease.read(tmp_path).renewed > first
    _write(tmp_path, token="someone-else")  # broken and taken by another host
    deadline = time.monotonic() + 10
    while not mine.lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mine.lost
    with pytest.raises(lease.LeaseLost, match="othernode"):
        mine.check()
    mine.release()
    assert lease.read(tmp_path).token == "someone-else"  # never removes a lease that is not its own


def test_a_mutex_left_by_a_killed_process_is_broken_after_its_stale_time(tmp_path, monkeypatch):
    (tmp_path / lease.MUTEX).mkdir()
    old = time.time() - lease.MUTEX_STALE_S - 5
    os.utime(tmp_path / lease.MUTEX, (old, old))
    with lease.Lease.acquire(tmp_path):
        pass
