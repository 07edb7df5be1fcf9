"""Which run this is and with which config: run ids, and the config a resumed run keeps.

A run id names the run's folder (harness.runfolder.run_dir), so it is checked before any folder is
made. Starting a run whose folder exists resumes it, and its saved config.json wins: an explicitly
given value that differs from the saved one is a ConfigError naming the key, except for the
RESUME_OVERRIDABLE keys (they change how long a run trains or where it reads from, not what it
computes: `epochs` extends a run; `allow_cpu` lets a run saved on a GPU machine go on where it has none).
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import string
from pathlib import Path
from typing import Iterable

from harness import config as config_module
from harness import runfolder
from harness.config import Config
from harness.errors import ConfigError

# Keys a resume may change: they do not change what the run computes, only how long or where from.
RESUME_OVERRIDABLE = ("epochs", "workers", "data_dir", "cache_dir", "allow_cpu")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_run_id() -> str:
    """8 lowercase letters/digits, like W&B's run ids."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def check_id(value: str, key: str) -> str:
    """`value` if it can name a folder (letters, digits, '.', '_', '-'); a ConfigError naming `key` if not."""
    if not _RUN_ID.match(value):
        raise ConfigError(
            f"'{key}' = {value!r}: use letters, digits, '.', '_' and '-' only (it names a folder), "
            "starting with a letter or digit"
        )
    return value


def resolve_config(run_dir: Path, config: Config, explicit_keys: Iterable[str] | None = None) -> Config:
    """The config a run in `run_dir` uses: the saved one on resume, `config` for a new run.

    On resume each key in `explicit_keys` (all keys when None) must equal the saved value, except
    RESUME_OVERRIDABLE keys, whose new values are taken.
    """
    saved = runfolder.read_config(run_dir)
    if saved is None:
        return config
    saved_path = Path(run_dir) / runfolder.CONFIG_FILE
    saved_values = {key: value for key, value in saved.items() if key in config_module.config_keys()}
    saved_config = config_module.from_dict(saved_values, source=str(saved_path))
    keys = config_module.config_keys() if explicit_keys is None else tuple(explicit_keys)
    updates = {}
    for key in keys:
        new_value, old_value = getattr(config, key), getattr(saved_config, key)
        if new_value == old_value:
            continue
        if key in RESUME_OVERRIDABLE:
            updates[key] = new_value
            continue
        raise ConfigError(
            f"config key '{key}' = {new_value!r} differs from {old_value!r} saved in {saved_path}: "
            f"a resumed run keeps its config (only {', '.join(RESUME_OVERRIDABLE)} may change); "
            "start a new run id to train with other values"
        )
    return dataclasses.replace(saved_config, **updates).validate() if updates else saved_config
