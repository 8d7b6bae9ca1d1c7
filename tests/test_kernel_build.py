"""harness.kernels: a process killed while it loaded the compiled loops leaves torch's build
lock behind; the next process must load them anyway, not wait for it forever."""

import signal
import subprocess
import sys

import pytest

from harness.kernels import CTC_MODULE, build_directory

STALE = f"""
import os, signal
from torch.utils.file_baton import FileBaton
assert FileBaton({{lock!r}}).try_acquire()   # what torch's cpp_extension.load holds while it loads
os.kill(os.getpid(), signal.SIGKILL)          # killed there, as by the out-of-memory killer
"""

TORCH_ALONE = f"""
from torch.utils import cpp_extension
from harness.kernels import build_directory
cpp_extension.load(name="{CTC_MODULE}", sources=[], build_directory=str(build_directory("{CTC_MODULE}")))
"""


def test_a_load_killed_midway_does_not_block_the_next(tmp_path):
    directory = build_directory(CTC_MODULE)
    if not (directory / f"{CTC_MODULE}.so").exists():
        pytest.skip(f"the compiled CTC module is not built in {directory} (scripts/setup.sh builds it)")
    lock = directory / "lock"
    try:
        killed = subprocess.run([sys.executable, "-c", STALE.format(lock=str(lock))])
        assert killed.returncode == -signal.SIGKILL and lock.exists()
        # torch's own loader waits for the dead process's lock (here cut off after 8 s; without
        # a lock it fails at once, since it has no sources, so the built module is not touched)
        with pytest.raises(subprocess.TimeoutExpired):
            subprocess.run([sys.executable, "-c", TORCH_ALONE], timeout=8, capture_output=True)
        # odyssey's loads anyway, and the loops work
        ours = subprocess.run([sys.executable, "-c", "from harness import kernels; m = kernels.ctc(); "
                               "print(m.edit_distance([1, 2, 3], [1, 3]))"],
                              timeout=300, capture_output=True, text=True)
        assert ours.returncode == 0, ours.stderr
        assert ours.stdout.split() == ["1"] and "could not be built" not in ours.stderr
        assert not lock.exists()
    finally:
        lock.unlink(missing_ok=True)  # never leave the lock to the tests that follow
