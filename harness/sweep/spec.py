"""Sweep YAMLs: load them, check them, read their metric (`sweep_metric`), and expand their `command`
exactly as W&B's agent does (with `run_variables`, the environment a run is started with).

A sweep file is W&B's sweep config (method, metric, parameters, early_terminate, run_cap, command,
program), so `wandb sweep FILE` and `harness sweep create FILE` accept the same file. Checking has two
layers: the engine's own schema (`sweeps.schema_violations_from_proposed_config`, what W&B's server
runs) and lints that know this project's training config (unknown keys, bad values, `log_uniform`
given real bounds, grid over a continuous range, a metric training never logs, a command that passes
no parameters). Every problem names its key, e.g. `parameters.learning_rate: ...`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness import config as harness_config
from harness import io, runfolder
from harness.errors import ConfigError, SweepError

# W&B's default when a sweep has no `command` (wandb/sdk/launch/sweeps/utils.py).
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
# Macros that stand for a whole list item; W&B drops an item naming any other `${...}` silently.
ARG_MACROS = (
    "args",
    "args_no_equals",
    "args_no_hyphens",
    "args_no_boolean_flags",
    "args_json",
    "args_append_hydra",
    "args_override_hydra",
)
WHOLE_ITEM_MACROS = ("env", "interpreter", "program", "args_json_file") + ARG_MACROS
# The macros whose output `python -m harness.train` understands as its parameters.
TRAIN_ARG_MACROS = ("args", "args_no_equals", "args_no_hyphens", "args_no_boolean_flags", "args_json_file")
# `${envvar:NAME}` works anywhere inside an item (same pattern as W&B: upper case, digits, '_').
ENVVAR_PATTERN = re.compile(r"\$\{envvar\:([A-Z0-9_]*)\}")
_WHOLE_MACRO = re.compile(r"^\$\{([A-Za-z0-9_]+)\}$")
_ANY_MACRO = re.compile(r"\$\{([^}]*)\}")

# Engine parameter types, by the name `sweeps.params.HyperParameter` gives them.
_GRID_TYPES = ("param_categorical", "param_single_value", "param_int_uniform", "param_quniform")
_CONTINUOUS_TYPES = (
    "param_uniform",
    "param_loguniform",
    "param_loguniform_v2",
    "param_inv_loguniform",
    "param_inv_loguniform_v2",
    "param_normal",
    "param_lognormal",
    "param_beta",
)
_NATURAL_LOG_DISTRIBUTIONS = ("log_uniform", "q_log_uniform")
_BOUNDED_DISTRIBUTIONS = ("uniform", "int_uniform", "q_uniform", "log_uniform_values", "q_log_uniform_values",
                          "inv_log_uniform_values")


# --- loading -------------------------------------------------------------------------------------
def load_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a sweep YAML (or JSON) file into a dict.

    Raises `SweepError` naming the file (and the line for YAML syntax errors and duplicate keys).
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SweepError(f"sweep file not found: {path}") from None
    except IsADirectoryError:
        raise SweepError(f"sweep file {path} is a directory") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        hint = ""
        if mark and "${" in text.splitlines()[min(mark.line, len(text.splitlines()) - 1)]:
            hint = " (in YAML a `${macro}` must be quoted or written as a block list item: `  - ${args}`)"
        raise SweepError(f"{path}{where}: not valid YAML: {error.problem or error}{hint}") from None
    except yaml.YAMLError as error:
        raise SweepError(f"{path}: not valid YAML: {error}") from None
    except _DuplicateKey as error:
        raise SweepError(f"{path} line {error.line}: key {error.key!r} appears twice") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: a sweep file must hold a mapping (method, metric, parameters, ...), "
                         f"got {type(data).__name__}")
    return data


def key_lines(path: str | os.PathLike[str]) -> dict[str, int]:
    """1-based line of each mapping key in a YAML file, by dotted path (`parameters.learning_rate`)."""
    import yaml

    lines: dict[str, int] = {}
    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return lines

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                dotted = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                lines.setdefault(dotted, key_node.start_mark.line + 1)
                walk(value_node, dotted)

    walk(root, "")
    return lines


def apply_sets(spec: Mapping[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """A copy of `spec` where each `KEY=VALUE` fixes parameter KEY to VALUE (`{value: VALUE}`).

    VALUE is read as YAML (`3` is an int, `demo/data` a string). Used by `harness sweep create --set`
    to point a shared sweep file at local paths without editing it.
    """
    import yaml

    spec = json.loads(json.dumps(spec))
    parameters = spec.setdefault("parameters", {})
    for assignment in assignments:
        if "=" not in assignment:
            raise SweepError(f"--set {assignment!r}: expected KEY=VALUE")
        key, text = assignment.split("=", 1)
        key = key.strip()
        if key not in harness_config.config_keys():
            raise SweepError(f"--set {assignment!r}: unknown config key {key!r}; valid keys: "
                             f"{', '.join(harness_config.config_keys())}")
        parameters[key] = {"value": yaml.safe_load(text) if text else ""}
    return spec


# --- checking ------------------------------------------------------------------------------------
def validate_spec(spec: Any) -> list[str]:
    """Every problem of a sweep config, each as `key: message` (empty when the sweep is fine).

    Engine schema violations come first (with the key they concern), then the project's lints.
    """
    if not isinstance(spec, dict):
        return [f"(sweep): must be a mapping of method, metric, parameters, ..., got {type(spec).__name__}"]
    problems = _engine_problems(spec)
    problems += _parameter_problems(spec)
    problems += _metric_problems(spec)
    problems += _command_problems(spec)
    return list(dict.fromkeys(problems))  # keep order, drop repeats


def validate_file(path: str | os.PathLike[str]) -> list[str]:
    """`validate_spec` of a file, each problem prefixed with `FILE:LINE:` where the key is found."""
    return locate(validate_spec(load_spec(path)), path)


def locate(problems: Iterable[str], path: str | os.PathLike[str]) -> list[str]:
    """Prefix each `key: message` problem with `FILE:LINE:` (the key's line) or `FILE:`."""
    lines = key_lines(path)
    located = []
    for problem in problems:
        key = problem.split(":", 1)[0].split("[", 1)[0]
        line = lines.get(key) or lines.get(key.rsplit(".", 1)[0])
        located.append(f"{path}:{line}: {problem}" if line else f"{path}: {problem}")
    return located


def import_engine():
    """The `sweeps` module, imported without the two pydantic warnings it prints on import."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*allow_population_by_field_name.*")
        warnings.filterwarnings("ignore", message="Valid config keys have changed in V2")
        warnings.filterwarnings("ignore", message="Support for class-based `config` is deprecated")
        import sweeps

    return sweeps


def _engine_problems(spec: dict[str, Any]) -> list[str]:
    sweeps = import_engine()
    from sweeps.config.schema import validator  # the same validator the public function runs

    problems: list[str] = []
    schema_messages = set()
    for error in validator.iter_errors(spec):
        key = ".".join(str(part) for part in error.absolute_path) or "(sweep)"
        message = error.message
        if error.validator == "anyOf" and key.startswith("parameters."):
            message += " (a parameter needs `value`, `values`, or `min`/`max` with an optional `distribution`)"
        elif error.validator == "additionalProperties":
            # Name the unexpected key itself (a typo such as `parameter:` for `parameters:`).
            unexpected = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            if len(unexpected) == 1:
                key = f"{key}.{unexpected[0]}" if key != "(sweep)" else str(unexpected[0])
        schema_messages.add(error.message)
        problems.append(f"{key}: {message}")
    try:
        violations = sweeps.schema_violations_from_proposed_config(spec)
    except ValueError as error:  # it raises (rather than reports) a parameter that is not a mapping
        violations = [str(error)]
    parameter_names = list(spec.get("parameters") or {}) if isinstance(spec.get("parameters"), dict) else []
    for message in violations:
        if message in schema_messages:
            continue
        name = next((name for name in parameter_names if re.search(rf"(^|[\s'\"]){re.escape(str(name))}($|[\s:'\"])", message)), None)
        key = f"parameters.{name}" if name is not None else "(sweep)"
        if message.startswith("invalid hyperparameter configuration") and any(p.startswith(key + ":") for p in problems):
            continue  # the schema error above already says so, with more detail
        problems.append(f"{key}: {message}")
    return problems


def _parameter_problems(spec: dict[str, Any]) -> list[str]:
    parameters = spec.get("parameters")
    if not isinstance(parameters, dict):
        return []
    from sweeps.params import HyperParameter

    keys = harness_config.config_keys()
    hints = _config_types()
    method = spec.get("method")
    problems: list[str] = []
    for name, definition in parameters.items():
        key = f"parameters.{name}"
        if name not in keys:
            problems.append(f"{key}: not a training config key (valid keys: {', '.join(keys)})")
            continue
        if not isinstance(definition, dict):
            continue  # the engine reports it
        distribution = definition.get("distribution")
        low, high = definition.get("min"), definition.get("max")
        if distribution in _NATURAL_LOG_DISTRIBUTIONS and _is_number(low) and _is_number(high) and 0 < low < high <= 1:
            problems.append(
                f"{key}: {distribution} takes natural-log bounds, so min={low} max={high} gives values "
                f"{math.exp(low):.4g}..{math.exp(high):.4g}; for real bounds write "
                f"`distribution: {distribution}_values`"
            )
        try:
            parameter_type = HyperParameter(name, dict(definition)).type
        except Exception:  # noqa: BLE001 - malformed: the engine's schema check reports it
            continue
        if method == "grid" and parameter_type not in _GRID_TYPES:
            problems.append(
                f"{key}: grid search cannot enumerate a {distribution or 'continuous'} range; "
                "use `values: [...]`, or `distribution: int_uniform` / `q_uniform`"
            )
        if hints.get(name) is int and parameter_type in _CONTINUOUS_TYPES:
            problems.append(f"{key}: {name} is an integer but {distribution or 'uniform'} draws fractions; "
                            "use `values`, `int_uniform` or `q_uniform` with an integer `q`")
        problems += _value_problems(name, definition, parameters)
    return problems


def _value_problems(name: str, definition: dict[str, Any], parameters: dict[str, Any]) -> list[str]:
    """Each concrete value the parameter can take, checked by the training config itself.

    Other parameters take their fixed `value`; a clash with another swept parameter counts only if it
    happens with every value that parameter can take (the sweep may never draw the bad pair).
    """
    keys = harness_config.config_keys()
    fixed = {other: spec["value"] for other, spec in parameters.items()
             if other != name and isinstance(spec, dict) and "value" in spec and other in keys}
    swept_others = {other: _candidates(spec) for other, spec in parameters.items()
                    if other != name and other not in fixed and other in keys and isinstance(spec, dict)}
    problems = []
    for candidate in _candidates(definition):
        message = _config_error({**fixed, name: candidate}, name)
        if message is None:
            continue
        involved = [other for other in swept_others if f"'{other}'" in message or f"{other}=" in message]
        if involved and any(_config_error({**fixed, name: candidate, **dict(zip(involved, combo))}, name) is None
                            for combo in itertools.islice(itertools.product(*(swept_others[o] for o in involved)), 256)):
            continue  # fine with some value of the other swept parameter(s)
        problems.append(f"parameters.{name}: value {candidate!r}: {message}")
    return problems


def _config_error(values: dict[str, Any], name: str) -> str | None:
    try:
        harness_config.apply_overrides(harness_config.Config(), values, source=f"sweep parameter {name}").validate()
    except ConfigError as error:
        return str(error)
    return None


def _candidates(definition: dict[str, Any]) -> list[Any]:
    if "value" in definition:
        return [definition["value"]]
    if isinstance(definition.get("values"), list):
        return list(definition["values"])
    low, high = definition.get("min"), definition.get("max")
    if not (_is_number(low) and _is_number(high)):
        return []
    distribution = definition.get("distribution")
    if distribution in _NATURAL_LOG_DISTRIBUTIONS:
        return [math.exp(low), math.exp(high)]
    if distribution is None or distribution in _BOUNDED_DISTRIBUTIONS:
        return [low, high]
    return []


def _metric_problems(spec: dict[str, Any]) -> list[str]:
    metric = spec.get("metric")
    problems = []
    if metric is None:
        if spec.get("method") == "bayes":
            problems.append("metric: bayes search needs a metric to optimise (name and goal)")
        if spec.get("early_terminate"):
            problems.append("metric: early_terminate needs a metric to compare runs by")
        return problems
    if isinstance(metric, dict) and isinstance(metric.get("name"), str):
        if metric["name"] not in harness_config.METRIC_NAMES:
            problems.append(f"metric.name: {metric['name']!r} is never logged by training; logged metrics: "
                            f"{', '.join(harness_config.METRIC_NAMES)}")
    return problems


def _command_problems(spec: dict[str, Any]) -> list[str]:
    command = spec.get("command")
    if command is None:
        if not spec.get("program"):
            return ["command: missing, and W&B's default command `${env} ${interpreter} ${program} ${args}` "
                    "needs `program`; write `command: [${env}, ${interpreter}, -m, harness.train, ${args}]`"]
        command = list(DEFAULT_COMMAND)
    if not isinstance(command, list) or not command:
        return ["command: must be a list of arguments, e.g. [${env}, ${interpreter}, -m, harness.train, ${args}]"]
    problems = []
    names = []
    for index, item in enumerate(command):
        item = str(item)
        whole = _WHOLE_MACRO.match(item)
        if whole:
            names.append(whole.group(1))
            if whole.group(1) not in WHOLE_ITEM_MACROS:
                problems.append(f"command[{index}]: unknown macro {item} (W&B would drop it); known: "
                                + ", ".join("${" + name + "}" for name in WHOLE_ITEM_MACROS) + ", ${envvar:NAME}")
            continue
        for inner in _ANY_MACRO.findall(item):
            if not inner.startswith("envvar:") or not ENVVAR_PATTERN.fullmatch("${" + inner + "}"):
                problems.append(f"command[{index}]: {item!r}: only ${{envvar:NAME}} (NAME in A-Z, 0-9, _) is "
                                "expanded inside an argument; other macros must be a whole list item")
    if "program" in names and not spec.get("program"):
        problems.append("command: uses ${program} but the sweep has no `program`")
    if not any(name in TRAIN_ARG_MACROS for name in names):
        problems.append("command: passes no parameters to the run; add ${args} (or ${args_no_hyphens}, "
                        "${args_no_boolean_flags}, ${args_no_equals}, or --config ${args_json_file})")
    return problems


def _config_types() -> dict[str, type]:
    import typing

    return typing.get_type_hints(harness_config.Config)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- the command line and environment of a run -----------------------------------------------------
def sweep_command(spec: Mapping[str, Any]) -> list[str]:
    """The sweep's `command`, or W&B's default."""
    command = spec.get("command")
    return [str(item) for item in command] if command else list(DEFAULT_COMMAND)


def macro_values(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """The argument macros for these parameter values, formatted as W&B's `create_sweep_command_args`.

    Values are written with Python's `str()` (so `1e-05`, `True`, `[1, 2]`), in the order given.
    """
    flags, no_hyphens, no_booleans, no_equals, hydra_append, hydra_override = [], [], [], [], [], []
    as_dict: dict[str, Any] = {}
    for name, value in params.items():
        flag = f"{name}={value}"
        flags.append("--" + flag)
        no_hyphens.append(flag)
        no_equals += [f"--{name}", str(value)]
        hydra_append.append("+" + flag)
        hydra_override.append("++" + flag)
        if isinstance(value, bool):
            if value:  # W&B omits false booleans and writes true ones as a bare flag
                no_booleans.append("--" + name)
        else:
            no_booleans.append("--" + flag)
        as_dict[name] = value
    return {
        "args": flags,
        "args_no_equals": no_equals,
        "args_no_hyphens": no_hyphens,
        "args_no_boolean_flags": no_booleans,
        "args_json": [json.dumps(as_dict)],
        "args_append_hydra": hydra_append,
        "args_override_hydra": hydra_override,
    }


def expand_command(
    command: Iterable[Any],
    params: Mapping[str, Any],
    program: str | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    interpreter: str | None = None,
) -> list[str]:
    """The argv of one run: `command` with W&B's macros expanded.

    Same rules as `wandb agent` (wandb_agent.py `_command_run` and launch/sweeps/utils.py):
    `${envvar:NAME}` is replaced anywhere in an item by $NAME (by NAME itself when unset); an item that
    is exactly `${macro}` becomes that macro's list of items (an unknown macro: nothing).
    `${env}` is `/usr/bin/env` on POSIX (nothing on Windows), `${program}` the sweep's `program`,
    `${args_json_file}` the path of `<run_dir>/args.json`, written here with `${args_json}`'s text.
    One difference, on purpose: `${interpreter}` is `sys.executable` (W&B writes `python`), so a run
    uses the agent's own virtual environment whatever `python` is first on PATH.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, list[str]] = dict(macro_values(params))
    values["interpreter"] = [interpreter or sys.executable]
    values["program"] = [program] if program else []
    values["env"] = ["/usr/bin/env"] if os.name == "posix" else []
    items = [_expand_envvars(str(item), environ) for item in command]
    if "${args_json_file}" in items:
        if run_dir is None:
            raise SweepError("the sweep command uses ${args_json_file}, which needs the run folder")
        json_path = Path(run_dir) / runfolder.ARGS_FILE
        io.atomic_write_text(json_path, values["args_json"][0])
        values["args_json_file"] = [str(json_path)]
    argv: list[str] = []
    for item in items:
        if item.startswith("${") and item.endswith("}"):
            argv += values.get(item[2:-1]) or []
        else:
            argv.append(item)
    return argv


def _expand_envvars(item: str, environ: Mapping[str, str]) -> str:
    # Right to left, as W&B does, so earlier match positions stay valid.
    for match in list(ENVVAR_PATTERN.finditer(item))[::-1]:
        item = f"{item[: match.start()]}{environ.get(match.group(1), match.group(1))}{item[match.end():]}"
    return item


# What a run's process must not inherit from its agent or launcher: a local sweep's run passes its own
# id to wandb.init (W&B's agent variable would have it look for a W&B sweep).
RUN_UNSET_VARIABLES = ("WANDB_SWEEP_ID",)


def run_variables(sweep_id: str, run_id: str, root: str | os.PathLike[str],
                  environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a sweep's run is started with, on top of its parent's environment less
    `RUN_UNSET_VARIABLES`: the same for a local agent's child and a SLURM job's.

    WANDB_RUN_ID is the run id and WANDB_RUN_GROUP = HARNESS_SWEEP_ID the sweep id (so W&B groups a
    sweep's runs), HARNESS_ROOT the runs root, WANDB_MODE the parent's (`environ`, default os.environ)
    if it sets one, else offline (unset and empty alike): nothing reaches a W&B server unless asked for.
    """
    environ = os.environ if environ is None else environ
    return {
        "WANDB_RUN_ID": run_id,
        "WANDB_RUN_GROUP": sweep_id,
        "HARNESS_SWEEP_ID": sweep_id,
        "HARNESS_ROOT": str(root),
        "WANDB_MODE": environ.get("WANDB_MODE") or "offline",
    }


# --- small readers used by the store, the engine bridge, agents and status ----------------------
def sweep_metric(spec: Mapping[str, Any]) -> tuple[str | None, str]:
    """(the metric's name, or None without one; its goal, 'maximize' or 'minimize'): the one reader of a
    sweep's `metric`, for the store, the engine bridge, agents, `harness status` and reports.

    The goal defaults to minimize, as W&B's does (a sweep without `metric.goal` minimizes).
    """
    metric = spec.get("metric")
    if not isinstance(metric, dict):
        return None, "minimize"
    return metric.get("name"), metric.get("goal") or "minimize"


def swept_keys(spec: Mapping[str, Any]) -> list[str]:
    """Parameters that vary between runs (not fixed by `value:`), in file order."""
    parameters = spec.get("parameters") or {}
    return [name for name, definition in parameters.items()
            if not (isinstance(definition, dict) and "value" in definition)]


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int) -> None:
        super().__init__(key)
        self.key, self.line = key, line


def _make_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last silently)."""

        def construct_mapping(self, node, deep=False):  # type: ignore[override]
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise _DuplicateKey(str(key), key_node.start_mark.line + 1)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


class _LazyLoader:
    """Builds the YAML loader class on first use, keeping `import yaml` out of import time."""

    _loader = None

    def __call__(self, stream):
        if _LazyLoader._loader is None:
            _LazyLoader._loader = _make_loader()
        return _LazyLoader._loader(stream)


_StrictLoader = _LazyLoader()
