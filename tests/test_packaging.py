"""The project's packaging stays consistent: pins, entry points, CI and README commands."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _requirement_name(requirement: str) -> str:
    return re.split(r"[=<>!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_dependency_is_pinned_exactly():
    project = _pyproject()["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    loose = [requirement for requirement in requirements if "==" not in requirement]
    assert not loose, f"unpinned requirements in pyproject.toml: {loose}"


# The two TensorFlow extras (one import package: an environment has one of them) and the conda file of each.
TENSORFLOW_EXTRAS = {"cpu": "environment.yml", "cuda": "environment-gpu.yml"}
# JAX's CUDA extra needs a newer cuDNN than the `cuda` extra pins: an environment of its own, in no conda file.
SEPARATE_EXTRAS = {"jax-cuda"}
JAX_VERSION = "0.6.2"


def _environment_pins(file: str) -> set[str]:
    environment = yaml.safe_load((REPO / file).read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    return {item for item in pip_section if not item.startswith("-e")}


@pytest.mark.parametrize("tensorflow_extra, file", sorted(TENSORFLOW_EXTRAS.items()))
def test_environment_yml_matches_pyproject(tensorflow_extra, file):
    """Each conda file holds the dependencies plus every extra (JAX's CPU one included), with its own one of the
    TensorFlow extras."""
    project = _pyproject()["project"]
    wanted = set(project["dependencies"])
    for name, extra in project.get("optional-dependencies", {}).items():
        if name in SEPARATE_EXTRAS:
            continue
        if name not in TENSORFLOW_EXTRAS or name == tensorflow_extra:
            wanted.update(extra)
    listed = _environment_pins(file)
    assert {_requirement_name(r): r for r in listed} == {_requirement_name(r): r for r in wanted}


def test_tensorflow_comes_from_exactly_one_extra_of_one_version():
    """tensorflow-cpu and tensorflow are the same import package: the base never names either, the `cpu`
    extra names tensorflow-cpu alone, the `cuda` extra tensorflow[and-cuda] (and NVIDIA's wheels), same version."""
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    tensorflow_names = {"tensorflow", "tensorflow-cpu"}
    assert not [r for r in project["dependencies"] if _requirement_name(r) in tensorflow_names]
    for name, extra in extras.items():
        if name not in TENSORFLOW_EXTRAS:
            assert not [r for r in extra if _requirement_name(r) in tensorflow_names], name
    (cpu,) = extras["cpu"]
    assert _requirement_name(cpu) == "tensorflow-cpu"
    cuda_tensorflow = [r for r in extras["cuda"] if _requirement_name(r) in tensorflow_names]
    assert cuda_tensorflow == [f"tensorflow[and-cuda]=={cpu.split('==')[1]}"]
    others = [r for r in extras["cuda"] if r not in cuda_tensorflow]
    assert others and all(_requirement_name(r).startswith("nvidia-") and _requirement_name(r).endswith("-cu12") for r in others)


def test_make_venv_installs_tensorflow_cpu_unless_cuda_is_asked_for():
    """CI's `make test` stays CPU-only; `make venv CUDA=1` swaps in the GPU build (and removes the other first)."""
    default = subprocess.run(["make", "-n", "venv", "VENV=/nonexistent/venv"], capture_output=True, text=True, cwd=REPO)
    cuda = subprocess.run(["make", "-n", "venv", "VENV=/nonexistent/venv", "CUDA=1"], capture_output=True, text=True, cwd=REPO)
    assert default.returncode == 0 and cuda.returncode == 0, default.stderr + cuda.stderr
    assert 'install --quiet -e ".[test,library,jax,cpu]"' in default.stdout and "uninstall --quiet --yes tensorflow;" in default.stdout
    assert 'install --quiet -e ".[test,library,jax,cuda]"' in cuda.stdout and "uninstall --quiet --yes tensorflow-cpu;" in cuda.stdout


def test_jax_extras_pin_one_jax_and_its_jaxlib():
    """`jax` (CPU, installed by `make venv` so the JAX tests run in CI) and `jax-cuda` name the same JAX and
    jaxlib; only `jax-cuda` has the CUDA plugin, its PJRT and NVIDIA's wheels; TensorFlow is in neither."""
    extras = _pyproject()["project"]["optional-dependencies"]
    assert extras["jax"] == [f"jax[cpu]=={JAX_VERSION}", f"jaxlib=={JAX_VERSION}"]
    gpu = extras["jax-cuda"]
    assert gpu[:4] == [f"jax[cuda12]=={JAX_VERSION}", f"jaxlib=={JAX_VERSION}", f"jax-cuda12-plugin=={JAX_VERSION}",
                       f"jax-cuda12-pjrt=={JAX_VERSION}"]
    assert all(_requirement_name(r).startswith("nvidia-") and _requirement_name(r).endswith("-cu12") for r in gpu[4:])
    # The reason jax-cuda stands apart: it and the `cuda` extra pin different cuDNN (pip would refuse both).
    cudnn = {name: next(r for r in extras[name] if _requirement_name(r) == "nvidia-cudnn-cu12") for name in ("cuda", "jax-cuda")}
    assert cudnn["cuda"] != cudnn["jax-cuda"]
    assert 'jax-cuda]' in (REPO / "docs" / "backends.md").read_text()


def test_console_script_and_module_entry_points_work():
    result = subprocess.run([sys.executable, "-m", "harness", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("synth", "prepare", "eda", "train", "sweep", "agent", "status", "launch",
                    "postprocess", "evaluate", "predict", "compare"):
        assert re.search(rf"^\s+{command}\b", result.stdout, re.MULTILINE), f"`harness {command}` missing:\n{result.stdout}"


def test_ci_runs_the_readme_test_command():
    readme_lines = (REPO / "README.md").read_text().splitlines()
    code = [line for line in readme_lines if line.startswith("make ")]
    assert [line.split()[1] for line in code[:2]] == ["demo", "test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()
