"""`search.launcher=slurm`: a sweep's workers as the tasks of one SLURM array job.

    odyssey sweep dataset=jsb_chorales search.variants=lstm search.launcher=slurm search.workers=32 \
        search.storage=journal:/nfs/odyssey.log search.slurm.partition=cpu search.slurm.time_min=600

Every array task is one sweep worker (harness.study.sweep.run_worker) that works through the
variants in turn, asking the shared storage for trials until each study has
`search.n_trials` counted ones; so the tasks cooperate exactly as local workers do, and a
rerun of the same command tops the studies up. The storage must be reachable from every
node: a journal file on a shared file system or PostgreSQL; SQLite is refused (its locks
do not work across machines). The job is submitted with submitit
(`submitit.SlurmExecutor`): its scripts and each task's log go to
`search.slurm.folder/<job id>_<task>/`, which, like the project and its .venv (the tasks run
this same Python), must be on a file system the nodes share.

Options (conf/search/greff.yaml, `search.slurm.*`): partition, time_min, cpus_per_task,
mem_gb, sbatch (more sbatch options, ["--account=lab", ...]), setup (shell lines before
each task), wait, poll_seconds. There are never more tasks than trials still to do.

With `wait: true` (default) the command follows the job: a line whenever the studies'
counted trials, best validation value or the tasks' states change, then a summary; an
array task that was cancelled, failed, ran out of time or raised an error is reported
with its log, and the command exits with status 4 (finished trials are kept; 3 if a study
has no complete trial, as for local workers). With
`wait: false` it prints the job id and how to follow it, and returns.

The states come from `scontrol show job` (no accounting database needed; submitit's
sacct calls warn and are bypassed on clusters without one). A task stopped by SIGTERM
(scancel) or by SLURM's warning signal before its time limit (SIGUSR2, 90 s ahead)
releases its running trial as lost, so that the trial is redone, not counted.
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from harness import project_root
from harness.errors import UserError

# Exit statuses, as harness.study.sweep's for local workers: a worker (here an array task) that did
# not end normally; a study without a single complete trial.
EXIT_TASK_FAILED, EXIT_NO_COMPLETE = 4, 3
# Final states of a SLURM job (squeue(1), JOB STATE CODES); anything else may still run.
FINAL_STATES = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"}
RESERVED_OPTIONS = {"array", "output", "error", "open-mode", "signal", "wrap"}  # set by submitit
SHARED_STORAGE = ("a journal file on a file system every node mounts (search.storage=journal:/nfs/odyssey.log) "
                  "or PostgreSQL (search.storage=postgresql://user@host/db)")


# -- options ------------------------------------------------------------------------------

def _positive_int(options, key: str) -> int:
    value = options.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"search.slurm.{key}={value!r}: give a positive integer.")
    return value


def sbatch_options(lines) -> dict:
    """search.slurm.sbatch (["--account=lab", "--exclusive", "#SBATCH --qos=long"]) as
    submitit's additional_parameters ({"account": "lab", "exclusive": True, ...})."""
    if lines is None:
        return {}
    if isinstance(lines, str) or not all(isinstance(line, str) for line in lines):
        raise UserError("search.slurm.sbatch: give a list of sbatch options, e.g. "
                        "search.slurm.sbatch=\"['--account=mylab','--qos=long']\".")
    options = {}
    for line in lines:
        text = line.strip().removeprefix("#SBATCH").strip()
        name, sep, value = text.removeprefix("--").partition("=")
        if not text.startswith("--") or not name or any(c.isspace() for c in name):
            raise UserError(f"search.slurm.sbatch: '{line}' is not a long sbatch option; write it as "
                            "--name=value or --flag (e.g. --account=mylab).")
        if name in RESERVED_OPTIONS:
            raise UserError(f"search.slurm.sbatch: --{name} is set by odyssey itself; leave it out.")
        options[name] = value if sep else True
    return options


def executor_parameters(options, tasks: int, job_name: str) -> dict:
    """submitit.SlurmExecutor parameters from search.slurm."""
    parameters = {"job_name": job_name, "time": _positive_int(options, "time_min"),
                  "cpus_per_task": _positive_int(options, "cpus_per_task"), "array_parallelism": tasks,
                  "additional_parameters": sbatch_options(options.get("sbatch"))}
    partition = options.get("partition")
    if partition is not None:
        if not isinstance(partition, str) or not partition.strip():
            raise UserError(f"search.slurm.partition={partition!r}: give a partition name (see `sinfo`) or null.")
        parameters["partition"] = partition
    mem_gb = options.get("mem_gb")
    if mem_gb is not None:
        if isinstance(mem_gb, bool) or not isinstance(mem_gb, (int, float)) or mem_gb <= 0:
            raise UserError(f"search.slurm.mem_gb={mem_gb!r}: give a positive number of GB, or null for the "
                            "cluster's default.")
        parameters["mem"] = f"{max(1, round(mem_gb * 1024))}M"
    setup = options.get("setup") or []
    if isinstance(setup, str) or not all(isinstance(line, str) for line in setup):
        raise UserError("search.slurm.setup: give a list of shell lines, e.g. \"search.slurm.setup=['module load "
                        "python']\".")
    if setup:
        parameters["setup"] = list(setup)
    return parameters


# -- one array task ----------------------------------------------------------------------

def array_task(cfg_container: dict, variants: list[str], worker: int) -> dict:
    """What one array task runs: a sweep worker over the variants, in turn."""
    import optuna

    from harness.storage import stop_on_signals
    from harness.study.sweep import run_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # After submitit's own handlers: scancel (SIGTERM) and the time-limit warning (SIGUSR2)
    # stop the worker, which releases its running trial as lost.
    stop_on_signals(signal.SIGTERM, signal.SIGUSR2)
    started = time.time()
    outcome = {"worker": worker, "host": socket.gethostname(), "stopped": None}
    try:
        for name in variants:
            run_worker(OmegaConf.create(cfg_container), name, worker)
    except KeyboardInterrupt as stop:
        outcome["stopped"] = str(stop) or "SIGINT"
    outcome["seconds"] = time.time() - started
    return outcome


# -- following the job -------------------------------------------------------------------

def array_task_ids(text: str) -> list[int]:
    """ArrayTaskId of scontrol: '3', '0-7%2', '0,2,4-5', '0-9:2'."""
    ids = []
    for part in text.split("%")[0].split(","):
        if not part:
            continue
        first, _, rest = part.partition("-")
        last, _, step = rest.partition(":")
        ids.extend(range(int(first), int(last or first) + 1, int(step or 1)))
    return ids


def task_states(job_id: str) -> dict[int, str] | None:
    """{array task: state} from `scontrol show job`; {} once SLURM has forgotten the job,
    None if slurmctld could not be asked this time. A task cancelled while pending has
    no record at all."""
    try:
        run = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if run.returncode != 0:
        return {} if "Invalid job id" in run.stderr else None
    states = {}
    for line in run.stdout.splitlines():
        fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
        if fields.get("JobId") == job_id and "ArrayTaskId" not in fields:  # one task: submitit's plain job
            fields["ArrayJobId"], fields["ArrayTaskId"] = job_id, "0"
        if fields.get("ArrayJobId") != job_id or "ArrayTaskId" not in fields:
            continue
        for task in array_task_ids(fields["ArrayTaskId"]):
            states[task] = fields.get("JobState", "UNKNOWN")
    return states


def _progress(storage, names: list[str], target: int) -> str:
    import optuna
    from optuna.trial import TrialState

    from harness.storage import counted

    parts = []
    for name in names:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        values = [t.value for t in trials if t.state == TrialState.COMPLETE]
        best = f", best val {min(values):.4f}" if values else ""
        parts.append(f"{name} {len(counted(trials))}/{target}{best}")
    return "; ".join(parts)


def _tasks_line(states: dict[int, str], tasks: int) -> str:
    running = sum(state in ("RUNNING", "COMPLETING") for state in states.values())
    pending = sum(state in ("PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED") for state in states.values())
    return f"tasks {running} running, {pending} pending, {tasks - running - pending} ended"


def follow(job_id: str, jobs: list, storage, names: list[str], target: int, poll: float) -> dict[int, str]:
    """Print the studies' progress until every array task has ended; the last states."""
    shown, misses = None, 0
    while True:
        states = task_states(job_id)
        if states is None:
            misses += 1
            if misses * poll > 600:
                raise UserError(f"search.launcher=slurm: slurmctld has not answered `scontrol show job {job_id}` for "
                                "10 minutes; the job may still run: follow it with squeue, rerun to top up.")
        else:
            misses = 0
            line = f"slurm job {job_id}: {_progress(storage, names, target)} | {_tasks_line(states, len(jobs))}"
            if line != shown:
                print(line, flush=True)
                shown = line
            if all(states.get(task, "GONE") in FINAL_STATES | {"GONE"} for task in range(len(jobs))):
                return states
        time.sleep(poll)


def task_problem(job, task: int, state: str) -> str | None:
    """Why an ended array task did not finish its work normally, or None if it did."""
    import submitit

    log = job.paths.stderr
    waited = time.time()
    while not job.paths.result_pickle.exists() and time.time() - waited < 10:  # a shared file system may lag
        time.sleep(0.5)
    if not job.paths.result_pickle.exists():
        what = {"GONE": "was cancelled before it started", "CANCELLED": "was cancelled",
                "TIMEOUT": "ran out of time (raise search.slurm.time_min)",
                "OUT_OF_MEMORY": "ran out of memory (raise search.slurm.mem_gb)"}.get(state, f"ended {state}")
        return f"array task {task} {what} without a result (log: {log})"
    try:
        outcome = job.result()
    except submitit.core.utils.FailedJobError as error:
        lines = [line for line in str(error).splitlines() if line.strip() and not line.startswith("-")]
        trace = [line for line in lines if not line.startswith((" ", "Job (task", "You can check", "or at paths"))]
        return f"array task {task} failed: {(trace or lines or ['an error'])[-1].strip()} (log: {log})"
    except submitit.core.utils.UncompletedJobError:
        return f"array task {task} ended {state} without a result (log: {log})"
    if outcome.get("stopped"):
        if state == "CANCELLED":
            return f"array task {task} was cancelled (log: {log})"
        reason = ("SLURM's warning before the time limit (raise search.slurm.time_min)"
                  if outcome["stopped"] == "SIGUSR2" else outcome["stopped"])
        return f"array task {task} was stopped by {reason} (log: {log})"
    if state not in ("COMPLETED", "GONE"):
        return f"array task {task} ended {state} (log: {log})"
    return None


# -- the launcher ------------------------------------------------------------------------

def launch(cfg, variants: list[str]) -> list[str]:
    """Submit the sweep of `variants` as one array job; wait for it unless search.slurm.wait=false."""
    import optuna
    from optuna.trial import TrialState

    from harness.datasets import load_dataset
    from harness.models import variant_config
    from harness.storage import counted, open_storage, protocol, redact
    from harness.study.sweep import open_study, space_of

    search = cfg.search
    options = search.get("slurm") or {}
    url = search.storage
    if isinstance(url, str) and url.startswith("sqlite"):
        raise UserError(f"search.storage={redact(url)}: SQLite cannot be shared by the tasks of a SLURM array job (its "
                        f"locks do not work across machines); use {SHARED_STORAGE}.")
    wait = options.get("wait", True)
    poll = options.get("poll_seconds", 10)
    if not isinstance(wait, bool):
        raise UserError(f"search.slurm.wait={wait!r}: give true or false.")
    if isinstance(poll, bool) or not isinstance(poll, (int, float)) or poll <= 0:
        raise UserError(f"search.slurm.poll_seconds={poll!r}: give a positive number of seconds.")
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        raise UserError("search.launcher=slurm: sbatch and scontrol are not on PATH; run the sweep on a machine "
                        "that submits SLURM jobs (a login node), or use search.launcher=local.")
    try:
        import submitit
    except ImportError:
        raise UserError("search.launcher=slurm needs submitit: run `bash scripts/setup.sh` "
                        "(or pip install -c constraints.txt submitit).") from None

    # States come from scontrol; submitit's warnings about a missing accounting database (sacct) are noise here.
    logging.getLogger("submitit").setLevel(logging.ERROR)
    storage = open_storage(url)
    load_dataset(cfg.dataset)  # the data is checked here, before a single task is queued
    target = int(search.n_trials)
    names, remaining = [], 0
    for name in variants:
        study = open_study(storage, cfg.dataset.name, name, seed=0, recipe=str(cfg.train.name))
        checked = cfg.copy()
        with open_dict(checked):
            checked.variant = variant_config(cfg, name)
        protocol.keep(study, checked, space_of(checked))  # before a task is queued (harness.storage.protocol)
        done = len(counted(study.get_trials(deepcopy=False)))
        print(f"{study.study_name}: {done}/{target} trials already done", flush=True)
        names.append(study.study_name)
        remaining += max(0, target - done)
    if remaining == 0:
        print("slurm: every study has its trials; nothing submitted.", flush=True)
        return names
    tasks = min(int(search.workers), remaining)
    folder = Path(str(options.get("folder") or "results/slurm")).expanduser()
    folder = folder if folder.is_absolute() else project_root() / folder
    executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=0)
    parameters = executor_parameters(options, tasks, f"odyssey-{cfg.dataset.name}")
    try:
        queued = subprocess.run(["squeue", "-h", "-n", parameters["job_name"], "-o", "%F"], capture_output=True,
                                text=True, timeout=60).stdout.split()
    except (OSError, subprocess.TimeoutExpired):  # only a note: sbatch below says what is wrong, if anything
        queued = []
    if queued:  # a sweep submitted with wait=false, still at work: the new tasks share its studies
        print(f"slurm: job {', '.join(sorted(set(queued)))} ({parameters['job_name']}) is still queued or running; "
              "the new tasks work on the same studies with it.", flush=True)
    try:
        executor.update_parameters(**parameters)
    except ValueError as error:
        raise UserError(f"search.slurm: {str(error).splitlines()[0]}") from None
    container = OmegaConf.to_container(cfg, resolve=True)
    threads = container.get("train", {}).get("threads")
    if threads is None or (isinstance(threads, str) and threads.strip().lower() == "auto"):
        container["train"]["threads"] = parameters["cpus_per_task"]  # a task's torch threads: the CPUs it has
    try:
        jobs = executor.map_array(array_task, [container] * tasks, [list(variants)] * tasks, list(range(tasks)))
    except Exception as error:  # sbatch refused the job: a partition, limit or option it does not know
        words = [line.strip() for line in str(error).splitlines() if "error" in line.lower()] or [str(error).strip()]
        raise UserError(f"search.launcher=slurm: sbatch refused the job ({words[-1][:300]}); check "
                        "search.slurm.partition, time_min, cpus_per_task, mem_gb and sbatch against `sinfo`.") from None
    job_id = str(jobs[0].job_id).split("_")[0]
    print(f"slurm: submitted array job {job_id}, {tasks} task(s) ({', '.join(names)}; storage {redact(url)}); "
          f"each task's log in {folder}/{job_id}_<task>/", flush=True)
    if not wait:
        print(f"slurm: follow it with `squeue -j {job_id}` (cancel: `scancel {job_id}`); the tasks write "
              "their trials to the storage, and running the same command again tops the studies up.", flush=True)
        return names
    try:
        states = follow(job_id, jobs, storage, names, target, float(poll))
    except KeyboardInterrupt:
        print(f"slurm: stopped following; job {job_id} keeps running (`squeue -j {job_id}`, `scancel {job_id}` "
              "to stop it).", flush=True)
        raise
    problems = [problem for task, job in enumerate(jobs)
                if (problem := task_problem(job, task, states.get(task, "GONE"))) is not None]
    print(f"slurm job {job_id}: {_progress(storage, names, target)}", flush=True)
    if problems:
        print(f"odyssey sweep: error: slurm job {job_id}: {'; '.join(problems)}; the finished trials are kept: "
              "run the same command again to top the studies up.", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_TASK_FAILED)
    without_complete = [name for name in names if not optuna.load_study(study_name=name, storage=storage)
                        .get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if without_complete:
        print(f"odyssey sweep: no trial completed in {', '.join(without_complete)} (every trial diverged or was "
              "lost); try a smaller search.space.learning_rate range.", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_NO_COMPLETE)
    return names
