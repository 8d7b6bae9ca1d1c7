"""scripts/setup.sh chooses torch's build: the CUDA build when asked (ODYSSEY_TORCH=cuda) or
when `nvidia-smi -L` lists a GPU, the CPU build otherwise or when asked (ODYSSEY_TORCH=cpu).
Checked by its dry run, which says what it would install and installs nothing, on a copy of
the script and its constraints files (so no .venv is made or touched)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import project_root

FILES = ("scripts/setup.sh", "constraints.txt", "constraints-cuda.txt")
CUDA_SPEC, CPU_SPEC = "torch==2.13.0,!=2.13.0+cpu", "torch==2.13.0+cpu"
H100 = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5c1e7ab2-0f3d-4d7e-9a51-0c2f6b1d9e44)"


@pytest.fixture
def copy(tmp_path):
    """A copy of what the dry run reads, and a bin folder of the commands it may call."""
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(project_root() / name, tmp_path / name)
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("dirname", "grep", "cat"):  # nothing else: no nvidia-smi unless a test puts one there
        (tools / tool).symlink_to(shutil.which(tool))
    return tmp_path


def fake_nvidia_smi(folder: Path, output: str, status: int = 0) -> None:
    script = folder / "bin" / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] || exit 64\necho '{output}'\nexit {status}\n")
    script.chmod(0o755)


def dry_run(folder: Path, torch: str | None, *flag: str):
    env = {"PATH": str(folder / "bin"), "HOME": str(folder)}
    if torch is not None:
        env["ODYSSEY_TORCH"] = torch
    if not flag:
        env["ODYSSEY_SETUP_DRY_RUN"] = "1"
    run = subprocess.run([shutil.which("bash"), str(folder / "scripts" / "setup.sh"), *flag], env=env,
                         capture_output=True, text=True, timeout=60)
    assert not (folder / ".venv").exists()  # nothing made, nothing installed
    return run


@pytest.mark.parametrize("torch,gpu,spec,why", [
    ("cuda", None, CUDA_SPEC, "(ODYSSEY_TORCH=cuda)"),
    ("cpu", H100, CPU_SPEC, "(ODYSSEY_TORCH=cpu)"),                         # forced, even with a GPU
    (None, H100, CUDA_SPEC, "(nvidia-smi lists GPU 0: NVIDIA H100 80GB HBM3)"),  # auto, the default
    ("auto", H100, CUDA_SPEC, "(nvidia-smi lists GPU 0: NVIDIA H100 80GB HBM3)"),
    ("auto", None, CPU_SPEC, "(nvidia-smi lists no GPU)"),                  # no nvidia-smi on PATH
    (None, "failed", CPU_SPEC, "(nvidia-smi lists no GPU)"),                # one that finds no driver
])
def test_the_dry_run_says_which_torch_it_would_install(copy, torch, gpu, spec, why):
    if gpu == "failed":
        fake_nvidia_smi(copy, "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.", 9)
    elif gpu is not None:
        fake_nvidia_smi(copy, gpu)
    for flag in ((), ("--dry-run",)):
        run = dry_run(copy, torch, *flag)
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        build = "the CUDA build" if spec == CUDA_SPEC else "the CPU build"
        assert lines[0].startswith(f"[setup] torch: {build}, {spec}") and lines[0].endswith(why), lines
        assert lines[1].startswith("[setup] dry run, nothing installed") and spec in lines[2], lines
        assert ("constraints-cuda.txt" in lines[1]) == (spec == CUDA_SPEC)


def test_an_unknown_choice_is_named(copy):
    run = dry_run(copy, "rocm")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip() == ("[setup] ODYSSEY_TORCH=rocm is unknown; use cpu, cuda or auto (the default: cuda "
                                  "where nvidia-smi lists a GPU).")


def test_both_builds_pin_the_version_odyssey_requires():
    root = project_root()
    cpu = re.search(r"^torch==(\S+)$", (root / "constraints.txt").read_text(), re.M)[1]
    cuda = re.search(r"^torch==([^,\s]+),!=(\S+)$", (root / "constraints-cuda.txt").read_text(), re.M)
    required = re.search(r'"torch==([^"]+)"', (root / "pyproject.toml").read_text())[1]
    assert cpu == f"{required}+cpu" and cuda[1] == required and cuda[2] == cpu
    pins = [line.split("==")[0] for line in (root / "constraints-cuda.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert all("==" in line for line in (root / "constraints-cuda.txt").read_text().splitlines()
               if line and not line.startswith("#"))  # exact versions only
    assert not set(pins[1:]) & {line.split("==")[0] for line in (root / "constraints.txt").read_text().splitlines()}
