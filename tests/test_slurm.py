"""search.launcher=slurm on a real one-node SLURM cluster that the tests start themselves.

The fixture `cluster` runs munged on a socket of its own, then slurmctld and slurmd with a
slurm.conf in a temporary directory, on this machine's short host name and two free ports,
bound to the loopback address; it waits until `sinfo` shows the node idle, and stops
everything afterwards. Where it cannot (Slurm or munge missing, not root, a daemon that
does not come up), the tests that need it skip with the reason. scripts/setup.sh installs
Debian's slurmctld, slurmd, slurm-client and munge with apt-get.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from harness import project_root
from harness.study.launchers.slurm import array_task_ids, sbatch_options

ROOT = project_root()
DAEMONS = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "squeue", "scancel")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Cluster:
    """A one-node SLURM cluster in a temporary directory (see the module docstring)."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="odyssey-slurm-"))
        self.dir.chmod(0o711)  # munged wants its socket's directory searchable by all
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.dir / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pid_files = [self.dir / name for name in ("slurmd.pid", "slurmctld.pid", "munged.pid")]

    def start(self) -> str | None:
        """None once the node is idle, else why the cluster could not start."""
        d = self.dir
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        started = subprocess.run(["munged", f"--socket={d}/munge.sock", f"--pid-file={d}/munged.pid",
                                  f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed",
                                  f"--key-file={key}"], capture_output=True, text=True)
        if started.returncode != 0:
            return f"munged did not start: {started.stderr.strip() or _tail(d / 'munged.log')}"
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        self.conf.write_text("\n".join([
            "ClusterName=odysseytest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={d}/munge.sock",
            f"StateSaveLocation={d}/state", f"SlurmdSpoolDir={d}/spool",
            f"SlurmctldPidFile={d}/slurmctld.pid", f"SlurmdPidFile={d}/slurmd.pid",
            f"SlurmctldLogFile={d}/slurmctld.log", f"SlurmdLogFile={d}/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
            "ReturnToService=2", "MpiDefault=none", "KillWait=10", "MinJobAge=600",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs=2 RealMemory={max(1000, memory_mb // 2)} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP", ""]))
        for daemon in ("slurmctld", "slurmd"):
            run = subprocess.run([daemon, "-f", str(self.conf)], env=self.env, capture_output=True, text=True)
            if run.returncode != 0:
                return f"{daemon} did not start: {run.stderr.strip() or _tail(d / f'{daemon}.log')}"
        deadline = time.time() + 60
        state = ""
        while time.time() < deadline:
            run = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
            state = (run.stdout or run.stderr).strip()
            if state == "idle":
                return None
            time.sleep(0.5)
        return (f"the node did not become idle in 60 s (sinfo: {state!r}; slurmctld: {_tail(d / 'slurmctld.log')}; "
                f"slurmd: {_tail(d / 'slurmd.log')})")

    def run(self, *command, **kwargs):
        return subprocess.run(list(command), env=self.env, capture_output=True, text=True, **kwargs)

    def stop(self):
        jobs = self.run("squeue", "-h", "-o", "%A").stdout.split()
        if jobs:
            self.run("scancel", *sorted(set(jobs)))
            time.sleep(2)
        for pid_file in self.pid_files:  # the daemons this fixture started, by their pid files
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                continue
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        pytest.skip(f"SLURM TESTS NOT RUN: {', '.join(missing)} missing; scripts/setup.sh installs them as root "
                    "(apt-get install slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        pytest.skip("SLURM TESTS NOT RUN: a one-node cluster of slurmctld and slurmd needs root")
    one = Cluster()
    reason = one.start()
    if reason is not None:
        one.stop()
        pytest.skip(f"SLURM TESTS NOT RUN: {reason}")
    yield one
    one.stop()


# ------------------------------------------------------------------ data and commands

def tiny_music(directory: Path) -> Path:
    """A user config dir with a tiny piano-roll data set (one-epoch trials of about a second)."""
    rolls = {split: [[[60 + (t + k) % 5, 67] for t in range(10)] for k in range(n)]
             for split, n in (("train", 4), ("valid", 2), ("test", 2))}
    (directory / "tiny.json").write_text(json.dumps(rolls))
    (directory / "conf" / "dataset").mkdir(parents=True, exist_ok=True)
    (directory / "conf" / "dataset" / "tiny.yaml").write_text(
        f"name: tiny\nformat: pianoroll\npath: {directory / 'tiny.json'}\ntask: next_step\nbidirectional: false\n")
    return directory / "conf"


def sweep_arguments(tmp_path, *more, storage=None):
    return ["sweep", "--config-dir", str(tiny_music(tmp_path)), "dataset=tiny", "variant=vanilla",
            "search.launcher=slurm", f"search.storage={storage or f'journal:{tmp_path}/studies.log'}",
            f"search.slurm.folder={tmp_path}/slurm", "search.slurm.poll_seconds=0.5", "search.slurm.time_min=10",
            "search.slurm.mem_gb=0.5", *more]


def odyssey(cluster, *arguments, timeout=300):
    return cluster.run(sys.executable, "-m", "harness.cli", *arguments, cwd=ROOT, timeout=timeout)


def study(tmp_path):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(f"{tmp_path}/studies.log"))
    return optuna.load_study(study_name="tiny.vanilla", storage=storage)


def counted(trials):
    return sum(t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "failure" in t.user_attrs)
               for t in trials)


def job_tasks(cluster, job_id):
    """{task: state} of an array job from scontrol, read here independently of the launcher."""
    out = cluster.run("scontrol", "-o", "show", "job", job_id).stdout
    states = {}
    for line in out.splitlines():
        task = re.search(r"\bArrayTaskId=(\d+)\b", line)
        if task or f"JobId={job_id} " in line:  # one task only: submitit submits a plain job
            states[int(task.group(1)) if task else 0] = re.search(r"\bJobState=(\w+)", line).group(1)
    return states


# ----------------------------------------------------------------------- the tests

def test_sbatch_options_and_array_task_ids():
    assert sbatch_options(["--account=lab", "#SBATCH --qos=long", " --exclusive "]) == {
        "account": "lab", "qos": "long", "exclusive": True}
    assert array_task_ids("0-3%2") == [0, 1, 2, 3] and array_task_ids("0,2,5-6") == [0, 2, 5, 6]
    assert array_task_ids("1-7:3") == [1, 4, 7] and array_task_ids("4") == [4]


@pytest.mark.parametrize("lines,words", [(["account=lab"], "not a long sbatch option"),
                                         (["--array=0-3"], "set by odyssey")])
def test_bad_sbatch_options_name_the_key(lines, words):
    from harness.errors import UserError

    with pytest.raises(UserError, match=words) as caught:
        sbatch_options(lines)
    assert "search.slurm.sbatch" in str(caught.value)


def test_sqlite_is_refused_with_a_clear_message(tmp_path):
    run = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", "search.launcher=slurm",
                          f"search.storage=sqlite:///{tmp_path}/x.db", "search.n_trials=1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr
    assert "SQLite" in lines[0] and "journal" in lines[0] and "postgresql://" in lines[0]
    assert not (tmp_path / "x.db").exists()  # refused before anything was made


def test_no_slurm_here_and_an_unknown_launcher(tmp_path):
    def run(*more, env=None):
        return subprocess.run([sys.executable, "-m", "harness.cli", "sweep", "search.n_trials=1",
                               f"search.storage=journal:{tmp_path}/s.log", *more], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env=env)

    no_slurm = run("search.launcher=slurm", env={**os.environ, "PATH": str(tmp_path)})  # no sbatch on PATH
    assert no_slurm.returncode == 2 and len(no_slurm.stderr.strip().splitlines()) == 1, no_slurm.stderr
    assert "sbatch" in no_slurm.stderr and "search.launcher=local" in no_slurm.stderr
    unknown = run("search.launcher=pbs")
    assert unknown.returncode == 2 and "search.launcher='pbs' is unknown" in unknown.stderr, unknown.stderr


@pytest.mark.slow
def test_a_sweep_runs_as_an_array_job_and_a_rerun_tops_it_up(cluster, tmp_path):
    run = odyssey(cluster, *sweep_arguments(tmp_path, "search.workers=2", "search.n_trials=4", "max_epochs=1",
                                            "search.slurm.sbatch=['--comment=odyssey-test']"))
    assert run.returncode == 0, run.stdout + run.stderr
    job_id = re.search(r"submitted array job (\d+), 2 task", run.stdout).group(1)
    assert job_tasks(cluster, job_id) == {0: "COMPLETED", 1: "COMPLETED"}
    assert "tiny.vanilla 4/4" in run.stdout  # the progress lines end at the target

    trials = study(tmp_path).get_trials()
    assert counted(trials) == 4 and not [t for t in trials if t.state == TrialState.RUNNING]
    # the job script submitit wrote carries the options given, in sbatch's own syntax
    script = (tmp_path / "slurm" / job_id / f"{job_id}_submission.sh").read_text()
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --comment=odyssey-test", "#SBATCH --cpus-per-task=1",
                 "#SBATCH --time=10", "#SBATCH --mem=512M", "#SBATCH --job-name=odyssey-tiny"):
        assert line in script, script
    # the tasks' own logs hold the trials they trained (surplus ones, started past the target, print nothing)
    logs = [(tmp_path / "slurm" / f"{job_id}_{k}" / f"{job_id}_{k}_0_log.out").read_text() for k in (0, 1)]
    assert sum(len(re.findall(r"\] trial \d+:", log)) for log in logs) >= 4

    again = odyssey(cluster, *sweep_arguments(tmp_path, "search.workers=2", "search.n_trials=6", "max_epochs=1"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "tiny.vanilla: 4/6 trials already done" in again.stdout
    assert counted(study(tmp_path).get_trials()) == 6

    done = odyssey(cluster, *sweep_arguments(tmp_path, "search.workers=2", "search.n_trials=6", "max_epochs=1"))
    assert done.returncode == 0 and "nothing submitted" in done.stdout, done.stdout + done.stderr


@pytest.mark.slow
def test_the_readmes_recipe_with_postgresql(cluster, tmp_path, postgres):
    """The array job's tasks share a study on a real PostgreSQL server (tests/postgres_server.py)."""
    url = postgres()
    run = odyssey(cluster, *sweep_arguments(tmp_path, "search.workers=2", "search.n_trials=4", "max_epochs=1",
                                            storage=url))
    assert run.returncode == 0, run.stdout + run.stderr
    job_id = re.search(r"submitted array job (\d+), 2 task", run.stdout).group(1)
    assert job_tasks(cluster, job_id) == {0: "COMPLETED", 1: "COMPLETED"}
    trials = optuna.load_study(study_name="tiny.vanilla", storage=url).get_trials()
    assert counted(trials) == 4 and not [t for t in trials if t.state == TrialState.RUNNING]


@pytest.mark.slow
def test_wait_false_returns_after_submitting(cluster, tmp_path):
    run = odyssey(cluster, *sweep_arguments(tmp_path, "search.workers=1", "search.n_trials=2", "max_epochs=1",
                                            "search.slurm.wait=false"))
    assert run.returncode == 0, run.stdout + run.stderr
    job_id = re.search(r"submitted array job (\d+)", run.stdout).group(1)
    assert f"squeue -j {job_id}" in run.stdout and "again" in run.stdout
    states = job_tasks(cluster, job_id)
    assert states and states[0] in ("PENDING", "RUNNING", "COMPLETING", "COMPLETED")
    deadline = time.time() + 120
    while job_tasks(cluster, job_id).get(0) != "COMPLETED" and time.time() < deadline:
        time.sleep(0.5)
    assert job_tasks(cluster, job_id) == {0: "COMPLETED"}
    assert counted(study(tmp_path).get_trials()) == 2


@pytest.mark.slow
def test_a_cancelled_array_task_is_reported(cluster, tmp_path):
    # long trials (many epochs, no early stop), so that the tasks are busy when cancelled
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *sweep_arguments(
            tmp_path, "search.workers=2", "search.n_trials=50", "max_epochs=100000", "patience=100000")],
        cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, job_id = time.time() + 120, None
        while time.time() < deadline:
            jobs = cluster.run("squeue", "-h", "-o", "%F %T", "-n", "odyssey-tiny").stdout.split()
            if len(jobs) >= 2 and "RUNNING" in jobs:
                job_id = jobs[0]
                trials = study(tmp_path).get_trials() if (tmp_path / "studies.log").exists() else []
                # both tasks inside a trial's training (all four parameters drawn), not inside study.ask
                if sum(t.state == TrialState.RUNNING and len(t.params) == 4 for t in trials) == 2:
                    break
            time.sleep(0.5)
        assert job_id is not None, "the array job never ran"
        cluster.run("scancel", f"{job_id}_1")
        time.sleep(3)
        cluster.run("scancel", job_id)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 4, out + err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "array task 0" in err and "array task 1" in err and "run the same command again" in err
    assert job_tasks(cluster, job_id) == {0: "CANCELLED", 1: "CANCELLED"}
    trials = study(tmp_path).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # released as lost on SIGTERM
    assert [t for t in trials if "lost" in t.user_attrs]
