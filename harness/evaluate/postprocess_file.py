"""postprocess.json, the tuned post-processing of a run or an ensemble: reading it back (checked), its
held-out score, and its per-class table as `harness postprocess` and `harness evaluate` print it.

`harness.evaluate.tuning` writes the file; `harness evaluate`, `harness predict`, `harness compare`,
`--rank-by held-out` and `harness sweep report` read it through here. The parameters themselves are
applied by `harness.evaluate.postprocess`, which knows nothing of files.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

from harness import CLASSES
from harness import io, runfolder
from harness.config import parse_size
from harness.errors import HarnessError
from harness.evaluate import postprocess
from harness.tables import format_table


def held_out_score(folder: str | Path) -> float | None:
    """The held-out estimate (`mean.dice_held_out`) of a run's or ensemble's postprocess.json; None without one."""
    path = Path(folder) / runfolder.POSTPROCESS_FILE
    if not path.exists():
        return None
    document = io.read_json(path)
    value = (document.get("mean") or {}).get("dice_held_out") if isinstance(document, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def load_params(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN_DIR/postprocess.json, checked; None when the run has not been tuned."""
    path = Path(run_dir) / runfolder.POSTPROCESS_FILE
    try:
        document = io.read_json(path)
    except ValueError as error:
        raise HarnessError(f"{path}: not valid JSON ({error})") from error
    if document is None:
        return None
    if not isinstance(document, dict) or "classes" not in document:
        raise HarnessError(f"{path}: no 'classes' section (expected the output of `harness postprocess`)")
    try:
        postprocess.class_params(document)
    except HarnessError as error:
        raise HarnessError(f"{path}: {error}") from error
    return document


def params_for_run(run_dir: str | Path) -> tuple[dict[str, Any], bool]:
    """The tuned parameters of a run or ensemble folder (per class and presence settings, what
    `apply_postprocess` takes) and True; the plain threshold and False (with a warning on stderr) when
    the folder has no postprocess.json yet."""
    document = load_params(run_dir)
    if document is None:
        print(
            f"warning: {Path(run_dir) / runfolder.POSTPROCESS_FILE} not found: using the plain threshold "
            f"{postprocess.DEFAULT_THRESHOLD} for every class (run `harness postprocess {run_dir}` first)",
            file=sys.stderr,
        )
        return {"classes": postprocess.default_params(), "presence": postprocess.Presence().to_dict()}, False
    return {"classes": postprocess.class_params(document),
            "presence": postprocess.presence_settings(document).to_dict()}, True


# --- the per-class table --------------------------------------------------------------------------------
def format_tuning_table(document: Mapping[str, Any]) -> str:
    """Per class: the all-empty baseline, dice raw / tuned-on / held-out, and the decision; plus the mean."""
    header, rows = table_rows(document)
    return format_table(rows, header=header, align="l" + "r" * (len(header) - 1), rules=(1, -1))


def _number(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def table_rows(document: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and text rows of `format_tuning_table` (also used for the PNG table and docs).

    empty: predicting nothing; raw: threshold 0.5; tuned-on: the chosen parameters on the images they
    were tuned on (optimistic); held-out: each fold with parameters tuned on the other folds (the estimate).
    """
    reference_hw = postprocess.REFERENCE_HW
    image_hw = parse_size(document.get("image_size", f"{reference_hw[0]}x{reference_hw[1]}"))
    factor = (reference_hw[0] * reference_hw[1]) / (image_hw[0] * image_hw[1])
    rule = bool(document.get("search", {}).get("mask_rule"))
    header = ["class", "empty", "raw", "tuned-on", "held-out", "decision", "threshold", "min size", "@350x525", "presence >="]
    if rule:
        header += ["area_min"]
    rows = [_class_row(name, document["classes"][name], factor, rule) for name in CLASSES]
    mean = document["mean"]
    rows.append(["mean", _number(mean.get("dice_empty")), _number(mean["dice_before"]), _number(mean["dice_after"]),
                 _number(mean.get("dice_held_out"))] + [""] * (len(header) - 5))
    return header, rows


def _class_row(name: str, entry: Mapping[str, Any], factor: float, rule: bool) -> list[str]:
    dropped = bool(entry.get("drop", False))
    row = [
        name,
        _number(entry.get("dice_empty")),
        _number(entry["dice_before"]),
        _number(entry["dice_after"]),
        _number(entry.get("dice_held_out")),
        "drop" if dropped else "keep",
    ]
    if dropped:
        return row + ["-", "-", "-", "-"] + (["-"] if rule else [])
    row += [f"{entry['threshold']:.2f}", str(entry["min_size"]), str(int(round(entry["min_size"] * factor))),
            f"{entry['p_min']:.2f}" if entry.get("p_min", 0.0) > 0 else "off"]
    return row + ([str(entry["area_min"])] if rule else [])


def summary_line(document: Mapping[str, Any]) -> str:
    """One line: the presence settings, the dropped classes and the held-out estimate's folds."""
    presence = postprocess.presence_settings(document)
    gate = document.get("presence", {}).get("gate", True)
    parts = [f"presence score: {presence.source}" + (f" (top {presence.top_k} px)" if presence.source != "classifier" else "")
             + ("" if gate else ", gate off") + (", the most likely class of each image kept" if presence.keep_top else "")]
    dropped = document.get("dropped") or [name for name, entry in document["classes"].items() if entry.get("drop")]
    parts.append("dropped (an empty mask scored best): " + (", ".join(dropped) if dropped else "none"))
    holdout = document.get("holdout", {})
    folds = holdout.get("folds")
    splits = holdout.get("per_split") or []
    if not folds:
        parts.append("held-out: not estimated (--folds 0)")
    elif len(splits) > 1:
        parts.append(f"held-out: {folds}-fold over the validation images, the mean of {len(splits)} splits "
                     f"(seeds {holdout.get('seed', 0)}..{holdout.get('seed', 0) + len(splits) - 1}; "
                     f"from {min(splits):.4f} to {max(splits):.4f})")
    else:
        parts.append(f"held-out: {folds}-fold over the validation images")
    return "; ".join(parts)
