"""What a run trains on: the device facts of the Keras backend, the GPU memory share, the precision policy.

The one module that knows backend-specific device details, so the rest of the harness asks here:
- `visible_gpus(environ)`: the GPUs `CUDA_VISIBLE_DEVICES` hands this process (None: not set);
- `configured_backend(environ)`: the Keras backend a child will use, read without importing Keras;
- `memory_share_environment(agents_sharing, backend)`: what a launcher puts in the environment of each of
  N runs that share one GPU; `apply_memory_share()`: the run's side of it, before the model is built;
- `apply_precision(config)` / `precision_policy(name)`: the Keras mixed-precision policy;
- `compile_options(config)`: the speed switches `model.compile` takes (jit_compile, steps_per_execution);
- `describe(config)`: the record of the device for summary.json, W&B and TensorBoard;
- `check(config)`: fail fast (DeviceError, exit 2) when the run was handed a GPU its framework cannot see.
- `skipped_step_result(model, arguments)`: a skipped step's train_function result (JAX threads its state);
- `check_model_backend(config)`: fail fast (DeviceError, exit 2) when the model cannot run on this backend
  (the library model is TensorFlow-only); cheap: reads the backend without importing Keras when it can
  (`current_backend`); `check` runs it first;
- `prepare_backend(config, run_dir)`: what a run sets up in its framework before the first op: op
  determinism (`deterministic`) and, under JAX, the persistent compilation cache
  (`compilation_cache_dir`, `enable_compilation_cache`) shared by every run under one runs root.

Why a memory share: TensorFlow maps nearly all of a GPU's memory into the first process that touches
it, so a second run on the same card fails with out-of-memory at its first step (the failure Ray users
hit with fractional GPUs, ray#13680). JAX preallocates 75% by default, with the same result. Each of N
runs sharing a card therefore gets about 0.9/N of it (0.1 left for the CUDA contexts themselves):
TensorFlow grows on demand up to a per-process limit set here, JAX preallocates its fraction, torch's
caching allocator is capped by `set_per_process_memory_fraction`.

Each backend has one small class below (`_TensorFlow`, `_Jax`, `_Torch`); TensorFlow and JAX (CPU) are
installed and tested here (docs/backends.md), torch is not; each imports its framework lazily and only
when Keras runs on it.
Nothing here initialises a GPU before `apply_memory_share` ran: listing TensorFlow's physical devices and
reading their details does not create a GPU context.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from harness.errors import DeviceError

if TYPE_CHECKING:  # pragma: no cover
    from harness.config import Config

BACKENDS = ("tensorflow", "jax", "torch")
# The share of a card that N runs split between them (the rest: CUDA contexts, cuDNN workspaces).
SHARED_MEMORY_TOTAL = 0.9
# The fraction of its GPU's memory a run may use, set by the launcher; the run applies it (every backend).
MEMORY_FRACTION_ENV = "HARNESS_GPU_MEMORY_FRACTION"
GPU_INSTALL_FIX = "`make venv CUDA=1`, or `pip uninstall -y tensorflow-cpu && pip install -e '.[cuda]'`"
NVIDIA_SMI_TIMEOUT_S = 20
# JAX's persistent compilation cache: this folder if set ("off": none), else <runs root>/JAX_CACHE_FOLDER.
JAX_CACHE_ENV = "HARNESS_JAX_CACHE"
JAX_CACHE_FOLDER = ".jax-cache"
# Models that run only on some backends, and on which (harness.model.library: segmentation_models is tf.keras).
MODEL_BACKENDS = {"sm_unet_resnet34": ("tensorflow",)}


# --- what the environment says ------------------------------------------------------------------
def visible_gpus(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The GPU ids `CUDA_VISIBLE_DEVICES` names: None when it is not set, [] when set empty or to -1.

    CUDA stops at the first invalid entry ("0,-1,1" is GPU 0 only), and so does this.
    """
    environ = os.environ if environ is None else environ
    text = environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return None
    ids = []
    for part in text.split(","):
        part = part.strip()
        if not part or part.startswith("-"):
            break
        ids.append(part)
    return ids


def configured_backend(environ: Mapping[str, str] | None = None) -> str:
    """The Keras backend a process started with `environ` will use: $KERAS_BACKEND, else the `backend`
    of keras.json ($KERAS_HOME or ~/.keras), else tensorflow. Reads no framework (a launcher's view)."""
    environ = os.environ if environ is None else environ
    if environ.get("KERAS_BACKEND"):
        return environ["KERAS_BACKEND"]
    home = Path(environ.get("KERAS_HOME") or Path(environ.get("HOME") or Path.home()) / ".keras")
    try:
        return str(json.loads((home / "keras.json").read_text()).get("backend") or "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def memory_fraction(agents_sharing: int) -> float:
    """Each run's share of a card that `agents_sharing` runs split: 0.9 / N, rounded down to 0.01."""
    if agents_sharing < 1:
        raise ValueError(f"agents_sharing must be >= 1, got {agents_sharing}")
    return math.floor(SHARED_MEMORY_TOTAL * 100 / agents_sharing) / 100


def memory_share(environ: Mapping[str, str] | None = None) -> float | None:
    """The memory fraction the launcher gave this run ($HARNESS_GPU_MEMORY_FRACTION); None: the whole card."""
    environ = os.environ if environ is None else environ
    text = environ.get(MEMORY_FRACTION_ENV)
    if not text:
        return None
    try:
        fraction = float(text)
    except ValueError:
        fraction = math.nan
    if not 0.0 < fraction <= 1.0:
        raise DeviceError(f"${MEMORY_FRACTION_ENV} = {text!r}: expected a fraction of the GPU's memory in (0, 1]")
    return fraction


def memory_share_environment(agents_sharing: int, backend: str) -> dict[str, str]:
    """The variables a launcher sets in a run's environment when `agents_sharing` runs share one GPU.

    One run per GPU: {} (the whole card, each framework's default). Otherwise $HARNESS_GPU_MEMORY_FRACTION
    (recorded by every run; applied by `apply_memory_share`) plus the backend's own switches.
    """
    if agents_sharing == 1:
        return {}
    fraction = memory_fraction(agents_sharing)
    return {MEMORY_FRACTION_ENV: f"{fraction:.2f}", **_backend(backend).memory_environment(fraction)}


# --- what the run does with it --------------------------------------------------------------------
def apply_memory_share(environ: Mapping[str, str] | None = None) -> float | None:
    """Apply the launcher's memory share to this process's GPUs; returns the fraction applied (None: none).

    Call it once, before anything touches a GPU (before the model is built): TensorFlow refuses to
    configure a device it has initialised. Nothing happens without the variable or without a GPU.
    """
    fraction = memory_share(environ)
    if fraction is None:
        return None
    return fraction if _backend(_keras_backend()).apply_memory_share(fraction, environ) else None


def apply_precision(config: "Config") -> str:
    """Set Keras' global dtype policy to `config.precision`; returns its name.

    Call it before the model is built: a layer takes the policy in force when it is made. The outputs
    stay float32 under any policy (harness.model: the output layers declare dtype="float32"), so the
    losses, the metrics and the presence head's logits are computed in float32. Under mixed_float16
    `model.compile` wraps the optimizer in a LossScaleOptimizer (Keras does it itself).
    """
    import keras

    keras.config.set_dtype_policy(config.precision)
    return keras.config.dtype_policy().name


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[str]:
    """`with precision_policy("mixed_bfloat16"):` build models under that policy, then restore the previous
    one (benchmarks and tests that compare precisions in one process)."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield name
    finally:
        keras.config.set_dtype_policy(previous)


def compile_options(config: "Config") -> dict[str, Any]:
    """The speed switches of `model.compile`: jit_compile ("auto" is Keras' own choice: XLA on a GPU with
    TensorFlow, always with JAX, never on a CPU-only TensorFlow or with torch) and steps_per_execution."""
    jit_compile: str | bool = {"true": True, "false": False}.get(config.jit_compile, "auto")
    return {"jit_compile": jit_compile, "steps_per_execution": config.steps_per_execution}


def describe(config: "Config", environ: Mapping[str, str] | None = None, model: Any = None) -> dict[str, Any]:
    """What this run trains on and how, for summary.json, the W&B config and the TensorBoard HParams.

    `precision` is the Keras policy in force (call after `apply_precision`); with the compiled `model`,
    `jit_compile_resolved` says whether XLA is on (what "auto" became); `compilation_cache` is the folder of
    JAX's persistent compilation cache (None: none, or another backend). Initialises no GPU.
    """
    environ = os.environ if environ is None else environ
    name = _keras_backend()
    backend = _backend(name)
    visible = visible_gpus(environ)
    seen = backend.gpus_seen()
    facts: dict[str, Any] = {"backend": name, "backend_version": backend.version()}
    if seen:
        facts.update(device="GPU", **_gpu_facts(backend, visible))
    else:
        facts.update(device="CPU", device_name=cpu_name(), gpu_memory_gb=None)
    facts.update(
        gpus_seen=seen, visible_gpus=visible, precision=_policy_name(), jit_compile=config.jit_compile,
        steps_per_execution=config.steps_per_execution, memory_share=memory_share(environ),
        compilation_cache=backend.compilation_cache(),
    )
    if model is not None:
        facts["jit_compile_resolved"] = bool(getattr(model, "jit_compile", False))
    return facts


def check(config: "Config", environ: Mapping[str, str] | None = None) -> None:
    """Raise DeviceError (exit 2) when the model does not run on this backend (`check_model_backend`), or
    when CUDA_VISIBLE_DEVICES names a GPU but the framework sees none.

    The message names the cause (a CPU-only build, no NVIDIA driver, CUDA libraries missing) and the
    install fix. With `allow_cpu: true` it is a one-line warning on stderr instead, and the run trains
    on the CPU.
    """
    environ = os.environ if environ is None else environ
    check_model_backend(config, environ)
    visible = visible_gpus(environ)
    if not visible:
        return
    name = _keras_backend()
    backend = _backend(name)
    if backend.gpus_seen():
        return
    causes = "; ".join(backend.no_gpu_causes(visible)) or "the cause is unknown"
    message = (f"CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']} but {backend.label} {backend.version()} "
               f"sees no GPU: {causes}")
    if config.allow_cpu:
        print(f"[run] warning: {message}; training on the CPU (allow_cpu: true)", file=sys.stderr, flush=True)
        return
    raise DeviceError(f"{message}. Install the GPU build: {backend.install_fix}; or set allow_cpu: true to train "
                      "on the CPU anyway")


def current_backend(environ: Mapping[str, str] | None = None) -> str:
    """The Keras backend of this process: Keras' own word once it is imported, else what it will pick
    (`configured_backend`), so a config check needs no framework import."""
    return _keras_backend() if "keras" in sys.modules else configured_backend(environ)


def check_model_backend(config: "Config", environ: Mapping[str, str] | None = None) -> None:
    """Raise DeviceError (exit 2) when `config.model` cannot run on this process's Keras backend.

    The library model (segmentation_models, SM_FRAMEWORK=tf.keras) is built from TensorFlow's Keras
    layers: under JAX or torch it would fail deep inside the library. Call it before anything heavy.
    """
    backends = MODEL_BACKENDS.get(config.model)
    name = current_backend(environ)
    if backends is None or name in backends:
        return
    raise DeviceError(
        f"config key 'model' = {config.model!r} runs only on the Keras backend {' or '.join(backends)}, and this "
        f"process runs on {name!r}: start it with KERAS_BACKEND={backends[0]}, or use model: unet (every backend)"
    )


def prepare_backend(config: "Config", run_dir: str | os.PathLike[str] | None = None,
                    environ: Mapping[str, str] | None = None) -> Path | None:
    """Set up the framework for a run, before its first op: op determinism when `config.deterministic`,
    and JAX's persistent compilation cache (the folder of `compilation_cache_dir`; the runs root is
    `run_dir`'s grandparent, `<root>/<sweep>/<run>`). Returns the cache folder in use (None: none)."""
    backend = _backend(_keras_backend())
    if config.deterministic:
        backend.enable_determinism()
    root = Path(run_dir).absolute().parent.parent if run_dir is not None else None
    directory = compilation_cache_dir(root, environ)
    return directory if directory is not None and backend.enable_compilation_cache(directory) else None


def compilation_cache_dir(runs_root: str | os.PathLike[str] | None = None,
                          environ: Mapping[str, str] | None = None) -> Path | None:
    """Where JAX keeps compiled programs across processes: $HARNESS_JAX_CACHE ("off" or "none": no cache),
    else `<runs root>/.jax-cache` (runs root: the argument, else $HARNESS_ROOT, else ./runs).

    One folder for every run under a root: the first process of a sweep compiles (a tiny UNet run's first
    epoch on this CPU: 13 s, 2.6 s with the cache), the others load its programs (docs/backends.md). JAX
    keys an entry by the program, the device, the jaxlib version and XLA_FLAGS, so a folder shared by
    different machines stays correct.
    """
    environ = os.environ if environ is None else environ
    configured = environ.get(JAX_CACHE_ENV, "").strip()
    if configured.lower() in ("off", "none"):
        return None
    if configured:
        return Path(configured).expanduser().absolute()
    from harness import io

    root = Path(runs_root) if runs_root is not None else io.runs_root(environ.get("HARNESS_ROOT") or None)
    return root.expanduser().absolute() / JAX_CACHE_FOLDER


def enable_compilation_cache(directory: str | os.PathLike[str]) -> bool:
    """Turn on JAX's persistent compilation cache in `directory` (made if missing); False: not under JAX."""
    return bool(_backend(_keras_backend()).enable_compilation_cache(Path(directory)))


def skipped_step_result(model: Any, arguments: tuple[Any, ...]) -> Any:
    """What a `train_function` that skips a step (exact resume: harness.run.callbacks) returns, in the
    backend's calling convention: the model's metrics so far (the carried partial sums) and nothing trained.

    TensorFlow and torch call `train_function(iterator)` and take the logs. JAX threads its state through
    `train_function(state, iterator) -> (logs, state)`, and fit() has taken the variables' values off the
    model into that state (Keras "purges" them to save memory): the metrics are read from the state.
    """
    if len(arguments) != 2:
        return model.get_metrics_result()
    import keras

    state = arguments[0]
    metrics_values = state[3]  # (trainable, non_trainable, optimizer, metrics), jax/trainer.py's order
    with keras.StatelessScope(state_mapping=list(zip(model.metrics_variables, metrics_values))):
        logs = model.get_metrics_result()
    return logs, state


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), with the count of CPUs this process may use."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({count} CPUs)"


@dataclasses.dataclass(frozen=True)
class NvidiaGpu:
    """One GPU as nvidia-smi lists it."""

    index: str
    name: str
    memory_mib: int


def nvidia_smi_gpus(ids: list[str] | None = None) -> tuple[list[NvidiaGpu], str | None]:
    """The GPUs nvidia-smi lists (only `ids`, indices or UUIDs, when given) and None, or ([], the problem).

    nvidia-smi numbers GPUs in PCI bus order; CUDA does too only with CUDA_DEVICE_ORDER=PCI_BUS_ID (on a
    box of identical cards the name and memory agree either way).
    """
    if shutil.which("nvidia-smi") is None:
        return [], "no NVIDIA driver here (nvidia-smi not found)"
    command = ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]
    if ids:
        command.append(f"--id={','.join(ids)}")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        return [], f"nvidia-smi did not answer ({error})"
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        return [], f"the NVIDIA driver does not answer (nvidia-smi: {said[0] if said else f'exit {result.returncode}'})"
    gpus = []
    for line in result.stdout.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 3 and fields[2].isdigit():
            gpus.append(NvidiaGpu(index=fields[0], name=fields[1], memory_mib=int(fields[2])))
    return gpus, None if gpus else "nvidia-smi lists no GPU"


# --- per backend ----------------------------------------------------------------------------------
class _TensorFlow:
    label = "TensorFlow"
    install_fix = GPU_INSTALL_FIX

    def version(self) -> str:
        import tensorflow as tf

        return tf.__version__

    def gpus_seen(self) -> int:
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))

    def gpu_name(self) -> str | None:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name") if gpus else None

    def gpu_memory_gb(self) -> float | None:
        return None  # TensorFlow does not say before it initialises the GPU: nvidia-smi does

    def memory_environment(self, fraction: float) -> dict[str, str]:
        # Growth: take memory as the run needs it, up to the per-process limit `apply_memory_share` sets.
        return {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}

    def apply_memory_share(self, fraction: float, environ: Mapping[str, str] | None) -> bool:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return False
        listed, _ = nvidia_smi_gpus(visible_gpus(environ) or None)
        for position, gpu in enumerate(gpus):
            if position < len(listed):
                limit_mib = int(fraction * listed[position].memory_mib)
                tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit_mib)])
            else:  # the card's size is unknown (no nvidia-smi): growth only, no limit
                tf.config.experimental.set_memory_growth(gpu, True)
        return True

    def enable_determinism(self) -> None:
        import tensorflow as tf

        # Deterministic kernels (and an error for an op that has none), the same result on each run.
        tf.config.experimental.enable_op_determinism()

    def enable_compilation_cache(self, directory: Path) -> bool:
        return False  # TensorFlow's graphs (and its XLA clusters) are rebuilt in each process: no cache to share

    def compilation_cache(self) -> str | None:
        return None

    def no_gpu_causes(self, visible: list[str]) -> list[str]:
        import tensorflow as tf

        causes = []
        if _installed("tensorflow-cpu"):
            causes.append("this venv has tensorflow-cpu (built without CUDA)")
        elif not tf.sysconfig.get_build_info().get("is_cuda_build"):
            causes.append("this TensorFlow is built without CUDA")
        listed, problem = nvidia_smi_gpus()
        if problem:
            causes.append(problem)
        elif not causes:
            causes.append(f"no CUDA libraries it can load (the NVIDIA wheels of tensorflow[and-cuda]), or GPU ids "
                          f"that are not these: nvidia-smi lists {', '.join(f'{gpu.index}: {gpu.name}' for gpu in listed)}")
        return causes


class _Jax:
    label = "JAX"
    install_fix = "`pip install -e '.[cpu,jax-cuda]'` (JAX's CUDA plugin, docs/backends.md)"

    def version(self) -> str:
        import jax

        return jax.__version__

    def _gpus(self) -> list[Any]:
        import jax

        try:
            return list(jax.devices("gpu"))
        except RuntimeError:  # no GPU backend
            return []

    def gpus_seen(self) -> int:
        return len(self._gpus())

    def gpu_name(self) -> str | None:
        gpus = self._gpus()
        return gpus[0].device_kind if gpus else None

    def gpu_memory_gb(self) -> float | None:
        return None  # memory_stats() gives JAX's pool limit, not the card: nvidia-smi does

    def memory_environment(self, fraction: float) -> dict[str, str]:
        # Preallocate the share at start (a share that does not fit fails there, not mid-run); both names of
        # the fraction: newer JAX reads XLA_CLIENT_MEM_FRACTION, older XLA_PYTHON_CLIENT_MEM_FRACTION.
        text = f"{fraction:.2f}"
        return {"XLA_PYTHON_CLIENT_PREALLOCATE": "true", "XLA_PYTHON_CLIENT_MEM_FRACTION": text, "XLA_CLIENT_MEM_FRACTION": text}

    def apply_memory_share(self, fraction: float, environ: Mapping[str, str] | None) -> bool:
        # JAX reads its variables when its GPU backend starts: set them here too, in case the launcher's
        # environment lacked them; too late if a JAX computation ran already.
        for name, value in self.memory_environment(fraction).items():
            os.environ.setdefault(name, value)
        return self.gpus_seen() > 0

    def enable_determinism(self) -> None:
        # XLA on a CPU is deterministic already. On a GPU its scatter/reduction kernels are not unless
        # XLA_FLAGS asks before the backend starts (it reads the flags once): set it here, before any op.
        # Only where JAX has a CUDA plugin: XLA_FLAGS is part of the compilation cache's key, and a flag
        # that does nothing would split the CPU runs' cache in two.
        flag = "--xla_gpu_deterministic_ops=true"
        flags = os.environ.get("XLA_FLAGS", "")
        if flag in flags or not self.has_cuda_plugin():
            return
        os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
        if _jax_started() and self.gpus_seen():
            print("[run] warning: deterministic: JAX started before XLA_FLAGS was set; GPU ops may not be "
                  "deterministic in this process", file=sys.stderr, flush=True)

    def enable_compilation_cache(self, directory: Path) -> bool:
        import jax

        directory.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(directory))
        # Every program, however quick to compile (the default keeps only those over 1 s) and however small:
        # a run makes many small ones (metrics, the seed generator) and the start-up pays for each.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        return True

    def compilation_cache(self) -> str | None:
        import jax

        return jax.config.jax_compilation_cache_dir or None

    def has_cuda_plugin(self) -> bool:
        return _installed("jax-cuda12-plugin") or _installed("jax-cuda13-plugin")

    def no_gpu_causes(self, visible: list[str]) -> list[str]:
        causes = []
        if not self.has_cuda_plugin():
            causes.append("jaxlib has no CUDA plugin here (jax[cuda12] is not installed)")
        _, problem = nvidia_smi_gpus()
        return causes + ([problem] if problem else [])


class _Torch:
    label = "PyTorch"
    install_fix = "a CUDA build of torch (`pip install torch` from PyPI on Linux, not the +cpu wheel)"

    def version(self) -> str:
        import torch

        return torch.__version__

    def gpus_seen(self) -> int:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def gpu_name(self) -> str | None:
        import torch

        return torch.cuda.get_device_name(0) if self.gpus_seen() else None

    def gpu_memory_gb(self) -> float | None:
        import torch

        return _gib(torch.cuda.get_device_properties(0).total_memory / 2**20) if self.gpus_seen() else None

    def memory_environment(self, fraction: float) -> dict[str, str]:
        # Expandable segments: less fragmentation when a capped allocator runs close to its cap.
        return {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}

    def apply_memory_share(self, fraction: float, environ: Mapping[str, str] | None) -> bool:
        import torch

        for index in range(self.gpus_seen()):
            torch.cuda.set_per_process_memory_fraction(fraction, index)
        return self.gpus_seen() > 0

    def enable_determinism(self) -> None:
        import torch

        torch.use_deterministic_algorithms(True)

    def enable_compilation_cache(self, directory: Path) -> bool:
        return False  # Keras runs torch eagerly: nothing compiled to keep

    def compilation_cache(self) -> str | None:
        return None

    def no_gpu_causes(self, visible: list[str]) -> list[str]:
        import torch

        causes = [] if torch.version.cuda else [f"torch {torch.__version__} is a CPU-only build"]
        _, problem = nvidia_smi_gpus()
        return causes + ([problem] if problem else [])


_BACKEND_CLASSES = {"tensorflow": _TensorFlow, "jax": _Jax, "torch": _Torch}


def _backend(name: str) -> Any:
    if name not in _BACKEND_CLASSES:
        raise DeviceError(f"Keras backend {name!r} is not supported; use one of: {', '.join(BACKENDS)}")
    return _BACKEND_CLASSES[name]()


def _keras_backend() -> str:
    import keras

    return keras.config.backend()


def _jax_started() -> bool:
    """Whether JAX has started its backends (after which it reads no XLA_FLAGS)."""
    from jax._src import xla_bridge

    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started()) if started is not None else False


def _policy_name() -> str:
    import keras

    return keras.config.dtype_policy().name


def _gpu_facts(backend: Any, visible: list[str] | None) -> dict[str, Any]:
    """The first GPU's name and memory: the framework's word where it has one, else nvidia-smi's."""
    listed, _ = nvidia_smi_gpus(visible[:1] if visible else None)
    name = backend.gpu_name() or (listed[0].name if listed else "unknown GPU")
    memory = backend.gpu_memory_gb() or (_gib(listed[0].memory_mib) if listed else None)
    return {"device_name": name, "gpu_memory_gb": memory}


def _gib(mib: float) -> float:
    return round(mib / 1024, 1)


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
