"""The resized data cache: decode every JPEG and RLE once, then serve batches from memory maps.

Layout, for a size HxW (`harness prepare DATA_DIR --size HxW`):

    <cache_dir>/<H>x<W>/images.u8    uint8 (N, H, W, 3) RGB, resized with INTER_AREA
    <cache_dir>/<H>x<W>/masks.u8     uint8 (N, H, W, 4) in {0, 1}, resized with INTER_NEAREST
    <cache_dir>/<H>x<W>/index.json   names, size, presence, fingerprint of the inputs, version

`<cache_dir>` defaults to `<data_dir>/cache`. The folder is built as `<H>x<W>.partial-<pid>` and renamed
into place only once complete with its index.json, so an interrupted prepare never reads as a cache;
a second prepare rebuilds. A lock file keeps two processes (say, two sweep agents starting at once)
from building the same cache twice. The fingerprint covers train.csv's bytes and each image's size
and modification time, so a changed CSV or image makes the cache stale and prepare rebuilds it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from harness.config import parse_size
from harness.data import labels as labels_module
from harness.data import rle as rle_module
from harness.errors import DataError
from harness.io import atomic_write_json, read_json

CACHE_VERSION = 1
IMAGES_FILE = "images.u8"
MASKS_FILE = "masks.u8"
INDEX_FILE = "index.json"
# Images per task sent to a worker: big enough to amortise the hand-off, small enough for a smooth bar.
_CHUNK = 16


@dataclasses.dataclass
class Cache:
    """An opened cache: read-only memory maps plus the index."""

    path: Path
    names: list[str]
    images: np.ndarray  # memmap uint8 (N, H, W, 3)
    masks: np.ndarray  # memmap uint8 (N, H, W, 4)
    presence: np.ndarray  # bool (N, 4), from the RLE strings (a class present before resizing)
    size: tuple[int, int]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.names)


def size_folder(cache_dir: str | Path, size: str | Sequence[int]) -> Path:
    height, width = parse_size(size)
    return Path(cache_dir) / f"{height}x{width}"


def default_cache_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "cache"


def fingerprint(data_dir: str | Path, table: labels_module.LabelTable | None = None) -> str:
    """Hash of train.csv's bytes and each listed image's name, size and modification time."""
    data_dir = Path(data_dir)
    csv_path = data_dir / "train.csv"
    if table is None:
        table = labels_module.read_train_csv(csv_path)
    digest = hashlib.sha256()
    digest.update(csv_path.read_bytes())
    images_dir = table.images_dir or data_dir / "train_images"
    for name in table.names:
        stat = (images_dir / name).stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def is_current(data_dir: str | Path, size: str | Sequence[int], cache_dir: str | Path | None = None) -> bool:
    """Whether a complete cache of `data_dir` at `size` exists and matches the current inputs."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(data_dir)
    index = read_json(size_folder(cache_dir, size) / INDEX_FILE)
    if not index or index.get("version") != CACHE_VERSION:
        return False
    try:
        return index.get("fingerprint") == fingerprint(data_dir)
    except (DataError, OSError):
        return False


def prepare(
    data_dir: str | Path,
    size: str | Sequence[int],
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Build the cache of `data_dir` at `size` (HxW) unless it is current; returns the cache root.

    The root is what `open_cache(root, size)` and the config key `cache_dir` take.
    """
    data_dir = Path(data_dir)
    height, width = parse_size(size)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(data_dir)
    target = size_folder(cache_dir, (height, width))
    if not data_dir.is_dir():
        raise DataError(f"data folder not found: {data_dir}")
    csv_path = data_dir / "train.csv"
    if not csv_path.is_file():
        raise DataError(f"{data_dir} has no train.csv (expected the challenge layout: train.csv + train_images/)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _lock(cache_dir / f".{height}x{width}.lock"):
        table = labels_module.read_train_csv(csv_path, data_dir / "train_images")
        current = fingerprint(data_dir, table)
        index = read_json(target / INDEX_FILE)
        if index and index.get("version") == CACHE_VERSION and index.get("fingerprint") == current:
            if progress:
                print(f"cache {target} is current ({len(index['names'])} images): nothing to do")
            return cache_dir
        _remove_partials(cache_dir, f"{height}x{width}")
        partial = cache_dir / f"{height}x{width}.partial-{os.getpid()}"
        partial.mkdir(parents=True)
        try:
            _build(table, partial, (height, width), workers, progress)
            atomic_write_json(
                partial / INDEX_FILE,
                {
                    "version": CACHE_VERSION,
                    "names": table.names,
                    "presence": table.presence.astype(int).tolist(),
                    "size": [height, width],
                    "fingerprint": current,
                    "data_dir": str(data_dir.resolve()),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
            _swap_into_place(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return cache_dir


def open_cache(cache_dir: str | Path, size: str | Sequence[int], data_dir: str | Path | None = None) -> Cache:
    """Open a prepared cache read-only; with `data_dir`, also check it is current for that data."""
    height, width = parse_size(size)
    folder = size_folder(cache_dir, (height, width))
    command = f"harness prepare {data_dir or 'DATA_DIR'} --size {height}x{width}" + (
        f" --cache {cache_dir}" if data_dir is None or Path(cache_dir) != default_cache_dir(data_dir) else ""
    )
    index = read_json(folder / INDEX_FILE)
    if not index:
        raise DataError(f"no prepared cache at {folder}: run `{command}`")
    if index.get("version") != CACHE_VERSION or list(index.get("size", [])) != [height, width]:
        raise DataError(f"cache at {folder} was written by another version: run `{command}` to rebuild it")
    if data_dir is not None and (Path(data_dir) / "train.csv").is_file():
        if index.get("fingerprint") != fingerprint(data_dir):
            raise DataError(
                f"cache at {folder} is out of date (train.csv or images in {data_dir} changed): run `{command}`"
            )
    count = len(index["names"])
    images = np.memmap(folder / IMAGES_FILE, dtype=np.uint8, mode="r", shape=(count, height, width, 3))
    masks = np.memmap(folder / MASKS_FILE, dtype=np.uint8, mode="r", shape=(count, height, width, 4))
    return Cache(
        path=folder,
        names=list(index["names"]),
        images=images,
        masks=masks,
        presence=np.array(index["presence"], dtype=bool).reshape(count, 4),
        size=(height, width),
        fingerprint=index["fingerprint"],
    )


def load_image(path: str | Path, size: str | Sequence[int] | None = None) -> np.ndarray:
    """A JPEG as RGB uint8 (H, W, 3), resized to `size` (HxW) with INTER_AREA when given."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"cannot read image {path} (missing or not a valid image file)")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if size is not None:
        height, width = parse_size(size)
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image


def load_example(image_path: str | Path, rles: Sequence[str], size: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One image and its four masks, decoded at the image's own size, then resized to `size`.

    Masks use nearest-neighbour resizing, done on each decoded plane's transpose (the C-contiguous
    view RLE decoding gives for free); nearest-neighbour resizing commutes with transposing, so the
    result equals resizing the (H, W, 4) stack, without a transposing copy at full resolution.
    """
    import cv2

    image = load_image(image_path)
    height, width = image.shape[:2]
    name = Path(image_path).name
    if size is None or tuple(parse_size(size)) == (height, width):
        return image, labels_module.decode_masks(tuple(rles), height, width, name)
    target_height, target_width = parse_size(size)
    image = cv2.resize(image, (target_width, target_height), interpolation=cv2.INTER_AREA)
    masks = np.zeros((target_height, target_width, len(rles)), dtype=np.uint8)
    for class_index, encoded in enumerate(rles):
        if encoded:
            label = f"{name}_{labels_module.CLASSES[class_index]}"
            columns = rle_module.decode(encoded, height, width, label=label).T  # (W, H), C-contiguous
            small = cv2.resize(columns, (target_height, target_width), interpolation=cv2.INTER_NEAREST)
            masks[..., class_index] = small.T
    return image, masks


# --- building -------------------------------------------------------------------------------------
def _build(
    table: labels_module.LabelTable, folder: Path, size: tuple[int, int], workers: int | None, progress: bool
) -> None:
    from tqdm.auto import tqdm

    height, width = size
    count = len(table)
    # Create both files at full length; workers open them r+ and fill their own rows.
    for name, channels in ((IMAGES_FILE, 3), (MASKS_FILE, 4)):
        with open(folder / name, "wb") as handle:
            handle.truncate(count * height * width * channels)
    images_dir = table.images_dir
    assert images_dir is not None
    tasks = [
        [(index, str(images_dir / table.names[index]), table.rles[index]) for index in range(start, min(start + _CHUNK, count))]
        for start in range(0, count, _CHUNK)
    ]
    workers = _worker_count(workers, count)
    bar = tqdm(total=count, desc=f"prepare {height}x{width}", unit="img", disable=not progress)
    with bar:
        if workers <= 1:
            _init_worker(str(folder), count, size)
            for task in tasks:
                bar.update(_fill(task))
            _close_worker()
        else:
            # spawn, not fork: the parent may hold TensorFlow's threads, which fork does not survive.
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(str(folder), count, size)
            ) as pool:
                futures = [pool.submit(_fill, task) for task in tasks]
                try:
                    for future in concurrent.futures.as_completed(futures):
                        bar.update(future.result())
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    for name in (IMAGES_FILE, MASKS_FILE):
        with open(folder / name, "rb+") as handle:
            os.fsync(handle.fileno())


def _worker_count(workers: int | None, count: int) -> int:
    if workers is None:
        workers = os.cpu_count() or 1
    # No more processes than chunks: each one costs a fresh interpreter (about half a second).
    return max(1, min(workers, -(-count // _CHUNK)))


_WORKER_STATE: dict[str, object] = {}


def _init_worker(folder: str, count: int, size: tuple[int, int]) -> None:
    import cv2

    cv2.setNumThreads(1)  # one image per process; OpenCV's own threads would only compete
    height, width = size
    _WORKER_STATE["size"] = size
    _WORKER_STATE["images"] = np.memmap(Path(folder) / IMAGES_FILE, dtype=np.uint8, mode="r+", shape=(count, height, width, 3))
    _WORKER_STATE["masks"] = np.memmap(Path(folder) / MASKS_FILE, dtype=np.uint8, mode="r+", shape=(count, height, width, 4))


def _close_worker() -> None:
    for key in ("images", "masks"):
        array = _WORKER_STATE.pop(key, None)
        if isinstance(array, np.memmap):
            array.flush()


def _fill(task: list[tuple[int, str, tuple[str, ...]]]) -> int:
    images = _WORKER_STATE["images"]
    masks = _WORKER_STATE["masks"]
    size = _WORKER_STATE["size"]
    assert isinstance(images, np.ndarray) and isinstance(masks, np.ndarray)
    for index, image_path, rles in task:
        image, mask = load_example(image_path, rles, size)  # type: ignore[arg-type]
        images[index] = image
        masks[index] = mask
    images.flush()  # type: ignore[union-attr]
    masks.flush()  # type: ignore[union-attr]
    return len(task)


def _swap_into_place(partial: Path, target: Path) -> None:
    """Rename the finished folder over `target` (a directory rename cannot replace a non-empty one)."""
    if target.exists():
        trash = target.with_name(f"{target.name}.old-{os.getpid()}")
        os.replace(target, trash)
        os.replace(partial, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(partial, target)


def _remove_partials(cache_dir: Path, stem: str) -> None:
    # Leftovers of an interrupted prepare (we hold the lock, so nobody is writing them).
    for leftover in cache_dir.glob(f"{stem}.partial-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in cache_dir.glob(f"{stem}.old-*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def describe(cache: Cache) -> str:
    height, width = cache.size
    megabytes = len(cache) * height * width * 7 / 1e6
    amount = f"{megabytes / 1000:.2f} GB" if megabytes >= 1000 else f"{megabytes:.1f} MB"
    return f"{len(cache)} images at {height}x{width} in {cache.path} ({amount})"


