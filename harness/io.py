"""Small file helpers shared by every module: atomic writes and the runs root.

Files that other processes read (run folders, caches, reports) are written to a temporary file in
the same folder and renamed over the target, so a reader never sees half a file and a kill never
leaves one behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

DEFAULT_ROOT = "runs"


def runs_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The runs root: the argument, else $HARNESS_ROOT, else ./runs."""
    if root is None or str(root) == "":
        root = os.environ.get("HARNESS_ROOT") or DEFAULT_ROOT
    return Path(root).expanduser().absolute()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    # mkstemp creates 0600; give the file the permissions a plain open() would (others on a shared
    # cluster filesystem must be able to read run folders and caches).
    os.fchmod(fd, 0o666 & ~_current_umask())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    """Read a JSON file; `default` if it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default


def read_jsonl(path: str | os.PathLike[str], skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """The JSON-object lines of a JSON-lines file, skipping every torn or unparsable line wherever it is.

    This is the one reader of `metrics.jsonl` (training, the store, hyperband, the SLURM controller,
    status and reports all read through it). A writer killed mid-line leaves a torn line; the
    rows after it (appended by a resumed run) are still read. Each skipped line is reported: as a
    message appended to `skipped` when given, else as one line on stderr. A missing file is empty.
    """
    rows: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    row, why = None, f"not JSON ({error.msg})"
                else:
                    why = "not a JSON object"
                if isinstance(row, dict):
                    rows.append(row)
                    continue
                message = f"{path}: line {number} skipped, {why}: {line[:60]!r}"
                if skipped is None:
                    print(f"warning: {message}", file=sys.stderr, flush=True)
                else:
                    skipped.append(message)
    except FileNotFoundError:
        pass
    return rows


def jsonl_text(rows: Iterable[Any]) -> str:
    """The JSON-lines text of `rows`, as `read_jsonl` reads it back (keys sorted, one row a line)."""
    return "".join(json.dumps(row, sort_keys=True, default=_json_default) + "\n" for row in rows)


def _json_default(value: Any) -> Any:
    # NumPy scalars and paths show up in metrics and configs; JSON has no type for them.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
