"""cloudsweep: sweeps for cloud-structure segmentation that run anywhere and survive being killed.

Importing the package is cheap on purpose: TensorFlow, wandb and the sweep engine are imported
inside the functions that need them, so the CLI and the agents start fast.

It also quiets TensorFlow's start-up lines for every harness command and every run it starts (they
inherit the environment), because every package is imported through this one:
- TF_CPP_MIN_LOG_LEVEL=3 (unless set already: a user's own level wins) hides TensorFlow's C++ log
  (cpu_feature_guard's "This TensorFlow binary is optimized...", the generator_dataset_op and "Local
  rendezvous is aborting" lines, oneDNN's "supports DT_INT32 only on platforms with AVX-512");
  Python warnings, Keras's and TensorFlow's Python-side log are not touched;
- two lines that no level hides, absl's "All log messages before absl::InitializeLog() is called..."
  and oneDNN's "custom operations are on", are written while TensorFlow loads its libraries: that
  import writes its stderr to a file, and everything else it wrote is passed on once it is done.
TF_CPP_MIN_LOG_LEVEL=0 turns both off (everything TensorFlow prints is shown).
"""

from __future__ import annotations

import os
import sys

__version__ = "0.1.0"

# The challenge's four classes, in the fixed order used by every array's last axis.
CLASSES: tuple[str, ...] = ("Fish", "Flower", "Gravel", "Sugar")

# What TensorFlow writes to stderr while it loads, whatever TF_CPP_MIN_LOG_LEVEL says.
TENSORFLOW_LOAD_LINES: tuple[bytes, ...] = (
    b"All log messages before absl::InitializeLog() is called are written to STDERR",
    b"oneDNN custom operations are on",
)


def _drop_load_lines(captured: bytes) -> bytes:
    lines = captured.splitlines(keepends=True)
    return b"".join(line for line in lines if not any(noise in line for noise in TENSORFLOW_LOAD_LINES))


def _write_stderr(data: bytes) -> None:
    while data:
        data = data[os.write(2, data):]


def _import_without_load_lines(execute, module) -> None:
    """Run TensorFlow's `import` with file descriptor 2 (where its C++ code writes) sent to a file,
    then pass on what it wrote there but the load lines: a Python warning or error stays, later."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            execute(module)
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                _write_stderr(_drop_load_lines(captured.read()))


class _QuietTensorFlowImport:
    """A `sys.meta_path` finder for the first `import tensorflow` (Keras's included), done once."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        execute = getattr(loader, "exec_module", None)
        if execute is not None:
            loader.exec_module = lambda module: _import_without_load_lines(execute, module)
        return spec


if os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3") != "0" and "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _QuietTensorFlowImport())
