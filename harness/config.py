"""The one training config: every knob a run, a sweep, the CLI and the docs know about.

Values are layered, later wins:
    defaults (below)  <  a YAML/JSON file (--config FILE)  <  --key=value arguments  <  wandb.config
The `--key=value` form is what W&B's `${args}` macro produces, so a sweep's command line is a valid
config. Unknown keys and bad values raise `ConfigError` (exit code 2) naming the key and the valid
choices. `docs/config.md` is generated from this file (`harness config --markdown`).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "nadam", "sgd", "rmsprop")
# Learning-rate schedules over the run's optimizer steps (built in harness.run.optim).
LR_SCHEDULES = ("constant", "cosine", "onecycle")
# How the mask loss weighs its (image, class) pairs (harness.run.losses.MaskLoss).
LOSS_WEIGHTINGS = ("none", "present")
LOSSES = ("bce", "dice", "bce_dice", "jaccard", "bce_jaccard")
MODELS = ("unet", "sm_unet_resnet34")
# Named augmentation pipelines (built in harness.data.augment; a test keeps the two in step).
AUGMENTATIONS = ("none", "flips", "default", "strong")
# Those that can also run as batched tensor ops on the training device (augment_device; harness.data.device_augment):
# strong's brightness/contrast stays with albumentations on the CPU, none has nothing to run.
DEVICE_AUGMENTATIONS = ("flips", "default")
MONITOR_MODES = ("max", "min")
# Keras dtype policies a run may train under (harness.run.device.apply_precision); outputs stay float32.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# model.compile's jit_compile: auto (Keras' own choice: XLA on a GPU, not on a CPU), or forced on/off.
JIT_COMPILE_MODES = ("auto", "true", "false")

# Per-epoch metrics a training run logs (to metrics.jsonl, TensorBoard and W&B); sweep lints read this.
TRAIN_METRICS = ("loss", "dice_coef", "kaggle_dice")
LOGGED_METRICS = TRAIN_METRICS + tuple(f"val_{name}" for name in TRAIN_METRICS) + ("lr", "epoch")
# Logged in addition when presence_head is on: the two parts of `loss` (= mask_loss + presence_loss_weight *
# presence_loss) and the presence classifier's accuracy (logit > 0) and ROC AUC over the (image, class) pairs.
PRESENCE_TRAIN_METRICS = ("mask_loss", "presence_loss", "presence_accuracy", "presence_auc")
PRESENCE_METRICS = PRESENCE_TRAIN_METRICS + tuple(f"val_{name}" for name in PRESENCE_TRAIN_METRICS)
# Every metric name a run can log (valid `monitor` values; presence ones need presence_head).
METRIC_NAMES = LOGGED_METRICS + PRESENCE_METRICS

# Arguments of `python -m harness.train` that say where/which run this is, not how to train it
# (spelled --run-id / --sweep-id on the command line; --run_id / --sweep_id are accepted too).
CONTROL_KEYS = ("config", "run_id", "root", "sweep_id", "restart")


@dataclasses.dataclass
class Config:
    # --- data -----------------------------------------------------------------------------------
    data_dir: str = "data"  # challenge layout: train.csv + train_images/ (see `harness synth`)
    cache_dir: str = ""  # where `harness prepare` wrote the cache; empty: <data_dir>/cache
    image_size: str = "384x576"  # HxW images are resized to; each divisible by 2**depth
    val_fraction: float = 0.2  # share of images in the validation split (stratified by classes)
    augment: str = "default"  # none | flips | default (flips + affine) | strong
    augment_device: bool = False  # run augment (flips or default only) as batched tensor ops on the training device (the GPU), not per image on the CPU
    workers: int = 2  # data-loading workers (Keras PyDataset)
    # --- model ----------------------------------------------------------------------------------
    model: str = "unet"  # unet (from scratch) | sm_unet_resnet34 (segmentation_models, extra [library])
    filters: int = 8  # filters of the first level, doubled at each level down
    depth: int = 4  # number of down-sampling levels
    dropout: float = 0.2  # after each pooling and each up-sampling block
    batchnorm: bool = True  # batch normalisation before each ReLU
    encoder_weights: str = ""  # sm_unet_resnet34 only: a local ImageNet weights file; empty: from scratch
    presence_head: bool = False  # add a per-class presence classifier on the bottleneck (outputs "mask", "presence" logits)
    presence_loss_weight: float = 0.5  # presence_head only: loss = mask loss + this * presence BCE
    # --- optimisation ---------------------------------------------------------------------------
    epochs: int = 20  # epochs to train (a resumed run continues up to this)
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # adam | adamw | nadam | sgd | rmsprop
    weight_decay: float = 1e-4  # adamw only: decoupled weight decay
    lr_schedule: str = "constant"  # constant | cosine (warmup, then cosine to 0) | onecycle (30% warmup from lr/25)
    warmup_epochs: float = 0.0  # cosine only: epochs of linear warmup from 0 to learning_rate
    loss: str = "bce_dice"  # bce | dice | bce_dice | jaccard | bce_jaccard
    loss_weighting: str = "none"  # none | present (Dice/Jaccard part over the pairs whose class is present)
    steps_per_epoch: int = 0  # cap on training batches per epoch; 0: the whole training split
    validation_steps: int = 0  # cap on validation batches; 0: the whole validation split
    monitor: str = "val_dice_coef"  # metric that picks best.keras and drives the callbacks below
    monitor_mode: str = "max"  # max | min
    early_stopping_patience: int = 0  # epochs without improvement before stopping; 0: off
    lr_patience: int = 0  # epochs without improvement before the LR is cut; 0: off
    lr_factor: float = 0.5  # LR multiplier on plateau
    threshold: float = 0.5  # probability threshold of the challenge metric (kaggle_dice)
    seed: int = 42  # split, shuffling, augmentation and weight init
    deterministic: bool = False  # deterministic ops (TensorFlow's; JAX's XLA, docs/backends.md): same seed, same weights, bit for bit (slower)
    # --- device and speed -----------------------------------------------------------------------
    precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16 (compute in 16 bits; outputs, losses, metrics stay float32)
    jit_compile: str = "auto"  # auto (Keras decides: XLA on a GPU, off on a CPU) | true | false (XLA forced on/off)
    steps_per_execution: int = 1  # train batches per compiled call (fewer Python round trips; callbacks see every Nth batch)
    allow_cpu: bool = False  # train on the CPU when CUDA_VISIBLE_DEVICES names a GPU the framework cannot see (else exit 2)
    # --- tracking -------------------------------------------------------------------------------
    wandb_project: str = "cloudsweep"  # W&B project (mode follows WANDB_MODE: online/offline/disabled)
    wandb_entity: str = ""  # W&B entity; empty: the account's default

    # Derived values ------------------------------------------------------------------------------
    @property
    def image_hw(self) -> tuple[int, int]:
        return parse_size(self.image_size, key="image_size")

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.data_dir) / "cache"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("model", self.model, MODELS)
        _check_choice("augment", self.augment, AUGMENTATIONS)
        if self.augment_device and self.augment not in DEVICE_AUGMENTATIONS:
            raise ConfigError(
                f"config keys 'augment_device' = true and 'augment' = {self.augment!r} do not combine: the device "
                f"runs augment {' or '.join(DEVICE_AUGMENTATIONS)} (strong's brightness/contrast runs on the CPU; "
                "none has nothing to run): set augment_device: false, or augment to one of those"
            )
        _check_choice("monitor_mode", self.monitor_mode, MONITOR_MODES)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        _check_choice("monitor", self.monitor, METRIC_NAMES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("jit_compile", self.jit_compile, JIT_COMPILE_MODES)
        if self.monitor in PRESENCE_METRICS and not self.presence_head:
            raise ConfigError(f"config key 'monitor' = {self.monitor!r} is logged only with presence_head: true")
        if self.lr_patience > 0 and self.lr_schedule != "constant":
            raise ConfigError(
                f"config keys 'lr_patience' = {self.lr_patience} and 'lr_schedule' = {self.lr_schedule!r} do not combine: "
                "LR-on-plateau needs lr_schedule: constant (or set lr_patience: 0)"
            )
        if self.loss_weighting == "present" and self.loss not in ("bce_dice", "bce_jaccard"):
            raise ConfigError(
                f"config key 'loss_weighting' = 'present' needs loss bce_dice or bce_jaccard (the BCE part still "
                f"sees the empty pairs), got loss = {self.loss!r}"
            )
        height, width = self.image_hw
        if self.depth < 1 or self.depth > 7:
            raise ConfigError(f"config key 'depth' must be between 1 and 7, got {self.depth}")
        step = 2**self.depth
        if height % step or width % step:
            raise ConfigError(
                f"config key 'image_size' = {self.image_size!r}: height and width must be divisible by "
                f"2**depth = {step} (depth={self.depth}); for example {height // step * step or step}x"
                f"{width // step * step or step}"
            )
        _check_range("epochs", self.epochs, low=1)
        _check_range("batch_size", self.batch_size, low=1)
        _check_range("filters", self.filters, low=1)
        _check_range("workers", self.workers, low=0)
        _check_range("steps_per_epoch", self.steps_per_epoch, low=0)
        _check_range("validation_steps", self.validation_steps, low=0)
        _check_range("early_stopping_patience", self.early_stopping_patience, low=0)
        _check_range("lr_patience", self.lr_patience, low=0)
        _check_range("steps_per_execution", self.steps_per_execution, low=1)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config key 'dropout' must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"config key 'val_fraction' must be in (0, 1), got {self.val_fraction}")
        if not self.learning_rate > 0.0:
            raise ConfigError(f"config key 'learning_rate' must be > 0, got {self.learning_rate}")
        if not 0.0 < self.lr_factor < 1.0:
            raise ConfigError(f"config key 'lr_factor' must be in (0, 1), got {self.lr_factor}")
        if not self.presence_loss_weight >= 0.0:
            raise ConfigError(f"config key 'presence_loss_weight' must be >= 0, got {self.presence_loss_weight}")
        if not self.weight_decay >= 0.0:
            raise ConfigError(f"config key 'weight_decay' must be >= 0, got {self.weight_decay}")
        if not self.warmup_epochs >= 0.0:
            raise ConfigError(f"config key 'warmup_epochs' must be >= 0, got {self.warmup_epochs}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"config key 'threshold' must be in (0, 1), got {self.threshold}")
        return self


def config_keys() -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(Config))


def field_docs() -> list[dict[str, str]]:
    """Each key's name, type, default and comment, read from this file (for docs and `--help`)."""
    comments = _field_comments()
    hints = typing.get_type_hints(Config)
    rows = []
    for field in dataclasses.fields(Config):
        rows.append(
            {
                "key": field.name,
                "type": hints[field.name].__name__,
                "default": json.dumps(field.default),
                "help": comments.get(field.name, ""),
            }
        )
    return rows


def parse_size(text: str | Iterable[int], key: str = "size") -> tuple[int, int]:
    """'384x576' (HxW) -> (384, 576). Also accepts a pair of ints."""
    if not isinstance(text, str):
        values = list(text)
        if len(values) == 2 and all(isinstance(v, int) and v > 0 for v in values):
            return int(values[0]), int(values[1])
        raise ConfigError(f"{key}: expected HxW such as 384x576, got {text!r}")
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ConfigError(f"{key}: expected HxW such as 384x576, got {text!r}")
    return int(parts[0]), int(parts[1])


def coerce_value(key: str, value: Any) -> Any:
    """Turn a value from a file, a command line or wandb.config into the key's declared type."""
    hints = typing.get_type_hints(Config)
    if key not in hints:
        raise ConfigError(_unknown_key_message(key))
    target = hints[key]
    try:
        if target is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
                return _BOOL_WORDS[value.strip().lower()]
            raise ValueError
        if target is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if target is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if target is str:
            if key == "image_size" and isinstance(value, (list, tuple)):
                height, width = parse_size(value, key=key)
                return f"{height}x{width}"
            if key == "jit_compile":
                return _jit_compile_word(value)
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"config key '{key}': cannot use {value!r} as {target.__name__}"
        ) from None
    raise ConfigError(f"config key '{key}': unsupported type {target!r}")  # pragma: no cover


def decode_wandb_text(value: Any) -> Any:
    """A value as `wandb agent` writes it into `--key=value`, back to what the sweep file said.

    W&B formats each value with Python's `str()`: a list arrives as `[64, 96]` (or `['a', 'b']`) and
    a null as `None`. Those two forms are decoded; every other text is returned unchanged.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text == "None":
        return None
    if text.startswith("[") and text.endswith("]"):
        try:
            decoded = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return value
        return decoded if isinstance(decoded, list) else value
    return value


def apply_overrides(config: Config, values: Mapping[str, Any], source: str) -> Config:
    """A copy of `config` with `values` applied; `source` names where they came from in errors.

    A null value (YAML `null`, W&B's `None`) means "not set": the key keeps its default.
    """
    defaults = Config()
    updates = {}
    for key, value in values.items():
        if key not in config_keys():
            raise ConfigError(_unknown_key_message(key, source))
        value = decode_wandb_text(value)
        if value is None:
            updates[key] = getattr(defaults, key)
            continue
        try:
            updates[key] = coerce_value(key, value)
        except ConfigError as error:
            raise ConfigError(f"{error} (from {source})") from None
    return dataclasses.replace(config, **updates)


def load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML or JSON config file. W&B's nested form {key: {value: v}} is accepted too."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value, got {type(data).__name__}")
    return {key: (value["value"] if isinstance(value, dict) and set(value) == {"value"} else value)
            for key, value in data.items()}


def parse_cli_args(argv: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split `--key=value` / `--key value` / `key=value` arguments into (config values, control values).

    Control keys (config, run_id, root, sweep_id, restart) say which run this is; everything else is
    config. A key may be spelled in kebab-case (`--run-id`, `--image-size`, as the help and the docs
    write it) or in snake_case (`--run_id`, `--image_size`, as W&B's ${args} writes it): both give the
    snake_case key.
    """
    overrides: dict[str, str] = {}
    control: dict[str, str] = {}
    args = list(argv)
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg.startswith("--"):
            body = arg[2:]
            if "=" in body:
                key, value = body.split("=", 1)
            elif index < len(args) and not args[index].startswith("--"):
                key, value = body, args[index]
                index += 1
            else:
                key, value = body, "true"  # a bare flag, as ${args_no_boolean_flags} produces
        elif "=" in arg:
            key, value = arg.split("=", 1)  # the ${args_no_hyphens} form
        else:
            raise ConfigError(f"unexpected argument {arg!r}: use --key=value (valid keys: {', '.join(config_keys())})")
        key = key.replace("-", "_")
        if key in CONTROL_KEYS:
            control[key] = value
        elif key in config_keys():
            overrides[key] = value
        else:
            raise ConfigError(_unknown_key_message(key, f"argument {arg!r}"))
    return overrides, control


def build_config(
    file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    wandb_config: Mapping[str, Any] | None = None,
) -> Config:
    """defaults < file < overrides < wandb_config, validated."""
    config = Config()
    if file:
        config = apply_overrides(config, load_file(file), source=f"file {file}")
    if overrides:
        config = apply_overrides(config, overrides, source="command line")
    if wandb_config:
        # wandb.config may carry W&B's own bookkeeping keys (starting with '_'); skip those only.
        known = {key: value for key, value in wandb_config.items() if not key.startswith("_")}
        config = apply_overrides(config, known, source="wandb.config")
    return config.validate()


def from_dict(values: Mapping[str, Any], source: str = "config.json") -> Config:
    """Rebuild a config saved by a run (config.json), strictly."""
    return apply_overrides(Config(), values, source=source).validate()


# --- helpers ---------------------------------------------------------------------------------------
_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "on": True, "off": False}


def _jit_compile_word(value: Any) -> str:
    """jit_compile as a sweep or a command line may give it (YAML true, W&B's `True`, on/off, 1/0) -> its
    canonical word; anything else is returned as given, for validate() to name the choices."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    if text in _BOOL_WORDS:
        return "true" if _BOOL_WORDS[text] else "false"
    return text if text == "auto" else str(value)


def _unknown_key_message(key: str, source: str | None = None) -> str:
    where = f" (from {source})" if source else ""
    return f"unknown config key '{key}'{where}; valid keys: {', '.join(config_keys())}"


def _check_choice(key: str, value: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"config key '{key}' = {value!r} is not one of: {', '.join(choices)}")


def _check_range(key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"config key '{key}' must be >= {low}, got {value}")


def _field_comments() -> dict[str, str]:
    """The `# comment` after each field in the Config class body."""
    import inspect

    source = inspect.getsource(Config)
    comments = {}
    for line in source.splitlines():
        stripped = line.strip()
        if ":" in stripped and "=" in stripped and "#" in stripped and not stripped.startswith(("#", "def", "@")):
            name = stripped.split(":", 1)[0].strip()
            if name.isidentifier():
                comments[name] = stripped.split("#", 1)[1].strip()
    return comments
