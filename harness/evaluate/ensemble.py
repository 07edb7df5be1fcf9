"""What `harness postprocess|evaluate|predict` work on: one run, or an ensemble of runs.

A TARGET is a folder that receives postprocess.json and evaluation.json, and its MEMBERS, the runs whose
probabilities (and presence scores) are averaged:
- one run folder: the run itself (the folder is its own target, as before ensembles);
- several run folders, or `--sweep ID --top K` (the sweep's K best finished runs by its metric, or with
  `--rank-by held-out` by their own post-processed held-out score): an ensemble; its folder (`--out-dir`, default `<root>/<sweep_id>/ensemble-top<K>` for a sweep) gets an
  ensemble.json naming the members;
- a folder holding ensemble.json: that ensemble again (how `harness evaluate` and `harness predict`
  reuse what `harness postprocess` tuned).

Members must share the validation split, or the tuning would be on images some member trained on:
the same data folder, image size, val_fraction and seed (checked; exit 2 naming what differs).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from harness import io, runfolder
from harness.errors import HarnessError
from harness.evaluate import inference
from harness.evaluate.postprocess_file import held_out_score

ENSEMBLE_FILE = "ensemble.json"
SPLIT_KEYS = ("data_dir", "image_size", "val_fraction", "seed")
RANKINGS = ("metric", "held-out")


@dataclasses.dataclass
class Target:
    folder: Path
    members: list[inference.RunInfo]
    sweep_id: str | None = None

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1 or (self.folder / ENSEMBLE_FILE).exists()

    @property
    def config(self) -> Any:
        """The first member's config: the split, image size and loss every member shares."""
        return self.members[0].config

    @property
    def label(self) -> str:
        if not self.is_ensemble:
            return self.members[0].run_id
        return f"ensemble of {len(self.members)} ({', '.join(member.run_id for member in self.members)})"

    @property
    def member_ids(self) -> list[str]:
        return [member.run_id for member in self.members]


def resolve(
    run_dirs: Sequence[str | os.PathLike[str]] = (),
    sweep_id: str | None = None,
    top: int | None = None,
    root: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    rank_by: str = "metric",
    tune: Callable[[Path], None] | None = None,
) -> Target:
    """The target of a command's arguments (see the module docstring); the members' split is checked.

    `rank_by`, `tune`: see `sweep_top_runs`."""
    run_dirs = [Path(path) for path in run_dirs]
    if sweep_id and run_dirs:
        raise HarnessError("give run folders or --sweep ID, not both")
    if top is not None and not sweep_id:
        raise HarnessError("--top needs --sweep ID")
    if rank_by != "metric" and not sweep_id:
        raise HarnessError("--rank-by needs --sweep ID")
    if sweep_id:
        run_dirs = sweep_top_runs(sweep_id, top or 1, root, rank_by=rank_by, tune=tune)
        folder = Path(out_dir) if out_dir else run_dirs[0].parent / f"ensemble-top{top or 1}"
    elif not run_dirs:
        raise HarnessError("no run folder given (give RUN_DIR..., or --sweep ID --top K)")
    elif len(run_dirs) == 1 and (run_dirs[0] / ENSEMBLE_FILE).exists():
        folder = run_dirs[0]
        run_dirs = _ensemble_members(folder)
        if out_dir:
            folder = Path(out_dir)
    elif len(run_dirs) == 1:
        if out_dir and Path(out_dir).resolve() != run_dirs[0].resolve():
            raise HarnessError("--out-dir is for ensembles (several runs or --sweep); one run writes into its own folder")
        folder = run_dirs[0]
    else:
        if not out_dir:
            raise HarnessError("several run folders make an ensemble: name its folder with --out-dir DIR")
        folder = Path(out_dir)
    members = [inference.load_run(path, data_dir=data_dir, cache_dir=cache_dir) for path in run_dirs]
    check_shared_split(members)
    target = Target(folder, members, sweep_id)
    if len(members) > 1 or sweep_id:
        _write_ensemble_file(target)
    return target


def sweep_top_runs(sweep_id: str, top: int, root: str | os.PathLike[str] | None = None, rank_by: str = "metric",
                   tune: Callable[[Path], None] | None = None) -> list[Path]:
    """Run folders of the `top` best finished runs of a local sweep.

    rank_by "metric": by the sweep's metric and goal (what the search optimised: on this data the raw
    val_kaggle_dice, a poor guide to the post-processed score). "held-out": by each run's own
    post-processed held-out estimate (`mean.dice_held_out` of its postprocess.json); `tune(folder)` is
    called first for the runs without one (`harness postprocess` does that), else they are an error.
    """
    from harness.sweep import status
    from harness.sweep.store import Store

    if top < 1:
        raise HarnessError(f"--top must be >= 1, got {top}")
    if rank_by not in RANKINGS:
        raise HarnessError(f"--rank-by {rank_by!r} is not one of: {', '.join(RANKINGS)}")
    with Store(root, read_only=True) as store:
        sweep = store.get_sweep(sweep_id)
        finished = [run for run in store.runs(sweep_id, states=["finished"]) if run.best_metric is not None]
        ranked = status.sorted_runs(sweep, finished)
        store_root = store.root
    if not ranked:
        raise HarnessError(f"sweep {sweep_id} has no finished run with a metric yet: nothing to ensemble")
    folders = [runfolder.run_dir(store_root, sweep_id, run.id) for run in ranked]
    if rank_by == "held-out":
        folders = _ranked_by_held_out(folders, tune)
    chosen = folders[:top]
    missing = [str(folder) for folder in chosen if not (folder / runfolder.BEST_FILE).exists()]
    if missing:
        raise HarnessError(f"sweep {sweep_id}: no {runfolder.BEST_FILE} in {', '.join(missing)}")
    if len(chosen) < top:
        print(f"note: sweep {sweep_id} has only {len(chosen)} finished run(s); using them all")
    return chosen


def _ranked_by_held_out(folders: list[Path], tune: Callable[[Path], None] | None) -> list[Path]:
    """`folders` best held-out first (ties: the given order); the untuned ones tuned first by `tune`."""
    untuned = [folder for folder in folders if held_out_score(folder) is None]
    if untuned and tune is None:
        raise HarnessError(f"--rank-by held-out: {len(untuned)} run(s) have no held-out score yet "
                           f"({', '.join(folder.name for folder in untuned)}): run `harness postprocess --sweep ... "
                           "--rank-by held-out` (it tunes them) first")
    for position, folder in enumerate(untuned, start=1):
        print(f"tuning run {folder.name} ({position} of {len(untuned)} without a held-out score) to rank it")
        tune(folder)
    scores = {folder: held_out_score(folder) for folder in folders}
    missing = [folder.name for folder, score in scores.items() if score is None]
    if missing:
        raise HarnessError(f"--rank-by held-out: no held-out score for {', '.join(missing)} (tuned with --folds 0?)")
    ranked = sorted(folders, key=lambda folder: -scores[folder])
    print("ranked by held-out: " + ", ".join(f"{folder.name} {scores[folder]:.4f}" for folder in ranked))
    return ranked


def check_shared_split(members: Sequence[inference.RunInfo]) -> None:
    """Raise (exit 2) unless every member has the first one's data, image size, val_fraction and seed."""
    first = members[0]
    for member in members[1:]:
        for key in SPLIT_KEYS:
            mine, theirs = _split_value(first.config, key), _split_value(member.config, key)
            if mine != theirs:
                raise HarnessError(
                    f"runs do not share the validation split: {key} is {theirs!r} in {member.run_dir} but {mine!r} in "
                    f"{first.run_dir}; ensemble members must have the same {', '.join(SPLIT_KEYS)}"
                )


def _split_value(config: Any, key: str) -> Any:
    value = getattr(config, key)
    return str(Path(value).expanduser().resolve()) if key == "data_dir" else value


def _ensemble_members(folder: Path) -> list[Path]:
    document = io.read_json(folder / ENSEMBLE_FILE)
    members = document.get("members") if isinstance(document, dict) else None
    if not members or not isinstance(members, list):
        raise HarnessError(f"{folder / ENSEMBLE_FILE}: no 'members' list of run folders")
    return [Path(path) for path in members]


def _write_ensemble_file(target: Target) -> None:
    document = {
        "members": [str(member.run_dir.resolve()) for member in target.members],
        "run_ids": target.member_ids,
        "sweep_id": target.sweep_id,
        "split": {key: _split_value(target.config, key) for key in SPLIT_KEYS},
    }
    io.atomic_write_json(target.folder / ENSEMBLE_FILE, document)


# --- predictions ------------------------------------------------------------------------------------
class Models:
    """The members' best models, each loaded once, on first use."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._models: dict[int, Any] = {}

    def loader(self, position: int) -> Callable[[], Any]:
        def load() -> Any:
            if position not in self._models:
                self._models[position] = inference.load_model(self.target.members[position].run_dir)
            return self._models[position]

        return load

    def all(self) -> list[Any]:
        return [self.loader(position)() for position in range(len(self.target.members))]


def average(maps: Sequence[inference.Maps]) -> inference.Maps:
    """The mean probabilities (and presence probabilities, when every member has them) of members' maps."""
    probabilities = np.mean([np.asarray(part.probabilities, dtype=np.float32) for part in maps], axis=0, dtype=np.float32) \
        if len(maps) > 1 else maps[0].probabilities
    with_presence = [part.presence for part in maps if part.presence is not None]
    presence = None
    if len(with_presence) == len(maps):
        presence = with_presence[0] if len(maps) == 1 else np.mean(with_presence, axis=0, dtype=np.float32)
    return inference.Maps(probabilities.astype(np.float32), presence)


def validation_maps(target: Target, validation: inference.Validation, tta: str = "none", models: Models | None = None,
                    progress: bool = True) -> inference.Maps:
    """The averaged validation maps of the members (each member's from its own cache)."""
    models = models or Models(target)
    return average([inference.validation_maps(member.run_dir, validation, tta=tta, model_loader=models.loader(position),
                                              progress=progress)
                    for position, member in enumerate(target.members)])


def predict_maps(models: Models, images: np.ndarray, tta: str = "none", progress: bool = True, desc: str = "predicting") -> inference.Maps:
    """The averaged maps of the members on uint8 images."""
    return average([inference.predict_maps(model, images, tta=tta, progress=progress, desc=desc) for model in models.all()])
