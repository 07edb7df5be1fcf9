"""The prepared cache: equal to a direct decode+resize, a no-op when current, atomic when interrupted."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from harness.data import cache, labels
from harness.errors import DataError


@pytest.fixture
def data_copy(synth_dir, tmp_path) -> Path:
    """A private copy of the synthetic dataset (without any cache) that a test may change."""
    target = tmp_path / "data"
    shutil.copytree(synth_dir, target, ignore=shutil.ignore_patterns("cache"))
    return target


def test_cache_equals_direct_decode_and_resize(synth_dir, prepared_cache):
    opened = cache.open_cache(prepared_cache, "64x96", data_dir=synth_dir)
    table = labels.read_train_csv(synth_dir / "train.csv")
    assert opened.names == table.names
    np.testing.assert_array_equal(opened.presence, table.presence)
    assert opened.images.shape == (24, 64, 96, 3) and opened.masks.shape == (24, 64, 96, 4)
    for index in (0, 7, 23):
        bgr = cv2.imread(str(synth_dir / "train_images" / table.names[index]))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        height, width = rgb.shape[:2]
        expected_image = cv2.resize(rgb, (96, 64), interpolation=cv2.INTER_AREA)
        masks = np.stack([labels.rle_module.decode(r, height, width) for r in table.rles[index]], axis=-1)
        expected_masks = cv2.resize(masks, (96, 64), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(opened.images[index], expected_image)
        np.testing.assert_array_equal(opened.masks[index], expected_masks)
    assert set(np.unique(opened.masks).tolist()) <= {0, 1}


def test_load_image_is_rgb_and_resized(synth_dir):
    name = sorted((synth_dir / "train_images").iterdir())[0]
    image = cache.load_image(name, "32x40")
    assert image.shape == (32, 40, 3) and image.dtype == np.uint8
    bgr = cv2.imread(str(name))
    np.testing.assert_array_equal(cache.load_image(name)[..., 0], bgr[..., 2])
    with pytest.raises(DataError, match="cannot read image .*missing.jpg"):
        cache.load_image(synth_dir / "missing.jpg")


def test_second_prepare_is_a_noop_and_a_changed_csv_rebuilds(data_copy, capsys):
    root = cache.prepare(data_copy, "32x48", workers=1, progress=False)
    assert root == data_copy / "cache"
    images_file = root / "32x48" / "images.u8"
    first_inode = images_file.stat().st_ino
    cache.prepare(data_copy, "32x48", workers=1, progress=True)
    assert "is current" in capsys.readouterr().out
    assert images_file.stat().st_ino == first_inode  # not rewritten

    # Drop the Fish mask of the first image: the cache is stale until rebuilt.
    csv_path = data_copy / "train.csv"
    lines = csv_path.read_text().splitlines()
    fish_line = next(i for i, line in enumerate(lines) if line.endswith(tuple("0123456789")) and "_Fish," in line)
    image_name = lines[fish_line].split("_Fish,")[0]
    lines[fish_line] = f"{image_name}_Fish,"
    csv_path.write_text("\n".join(lines) + "\n")
    assert not cache.is_current(data_copy, "32x48")
    with pytest.raises(DataError, match=r"out of date.*harness prepare"):
        cache.open_cache(root, "32x48", data_dir=data_copy)
    cache.prepare(data_copy, "32x48", workers=1, progress=False)
    rebuilt = cache.open_cache(root, "32x48", data_dir=data_copy)
    index = rebuilt.names.index(image_name)
    assert not rebuilt.presence[index, 0] and not rebuilt.masks[index, ..., 0].any()
    assert not list(root.glob("32x48.*")), "no partial or old folders left behind"


def test_parallel_prepare_equals_serial(data_copy, tmp_path):
    serial = cache.open_cache(cache.prepare(data_copy, "40x60", cache_dir=tmp_path / "a", workers=1, progress=False), "40x60")
    parallel = cache.open_cache(cache.prepare(data_copy, "40x60", cache_dir=tmp_path / "b", workers=2, progress=False), "40x60")
    np.testing.assert_array_equal(serial.images, parallel.images)
    np.testing.assert_array_equal(serial.masks, parallel.masks)


def test_missing_cache_tells_the_user_what_to_run(data_copy):
    with pytest.raises(DataError, match=r"no prepared cache .*run `harness prepare .* --size 64x96"):
        cache.open_cache(data_copy / "cache", "64x96", data_dir=data_copy)


def test_prepare_of_bad_folders(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        cache.prepare(tmp_path / "nothing", "32x32")
    with pytest.raises(DataError, match="has no train.csv"):
        cache.prepare(tmp_path, "32x32")


def test_unreadable_image_fails_and_leaves_no_cache(data_copy):
    victim = sorted((data_copy / "train_images").iterdir())[5]
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=f"cannot read image .*{victim.name}"):
        cache.prepare(data_copy, "32x48", workers=1, progress=False)
    assert not (data_copy / "cache" / "32x48").exists()
    assert not list((data_copy / "cache").glob("32x48.partial-*"))


_SLOW_PREPARE = """
import sys, time
from harness.data import cache
original = cache._fill
def slow_fill(task):
    done = original(task)
    print("chunk", flush=True)
    time.sleep(30)
    return done
cache._fill = slow_fill
cache._CHUNK = 4
cache.prepare(sys.argv[1], "32x48", workers=1, progress=False)
"""


def test_killed_prepare_never_reads_as_a_cache_and_a_rerun_rebuilds(data_copy):
    # A real prepare process, killed with SIGKILL part-way through (after its first chunk is written).
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PREPARE, str(data_copy)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "chunk"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    leftovers = list((data_copy / "cache").glob("32x48.partial-*"))
    assert leftovers and (leftovers[0] / "images.u8").exists()
    assert not (data_copy / "cache" / "32x48").exists()
    with pytest.raises(DataError, match="no prepared cache"):
        cache.open_cache(data_copy / "cache", "32x48")
    assert not cache.is_current(data_copy, "32x48")

    cache.prepare(data_copy, "32x48", workers=1, progress=False)
    opened = cache.open_cache(data_copy / "cache", "32x48", data_dir=data_copy)
    assert len(opened) == 24 and opened.images[-1].any()
    assert not list((data_copy / "cache").glob("32x48.partial-*"))


def test_a_second_prepare_waits_for_the_first(data_copy):
    # Two processes preparing the same cache at once: one builds, the other finds it current.
    script = "import sys; from harness.data import cache; cache.prepare(sys.argv[1], '32x48', workers=1)"
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(data_copy)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes)
    assert sum("is current" in output for output in outputs) == 1
    assert cache.is_current(data_copy, "32x48")
