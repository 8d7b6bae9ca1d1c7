"""Load test of the sweep's storage layer: many concurrent stub workers on one study, with faults.

    .venv/bin/python scripts/load_test.py                      # 64 workers, PostgreSQL and journal
    .venv/bin/python scripts/load_test.py --workers 16 --trials 64 --storages journal
    .venv/bin/python scripts/load_test.py --kill 0 --no-restart   # no faults
    .venv/bin/python scripts/load_test.py --url postgresql://user@host/db   # a storage of yours

Every worker is the sweep's own loop (harness.study.sweep.run_worker: liveness checks, ask,
surplus check, heartbeats, tell, reconnecting after a lost connection) in a process of its
own, with the training replaced by a stub that sleeps `--sleep` seconds and returns a value
known from the parameters. Before the workers start, `--enqueue` trials are enqueued with
given parameters. Faults: `--kill` (a tenth) of the workers are killed with SIGKILL at
random times while the study runs, each replaced by a new worker; on the script's own
PostgreSQL server, `pg_ctl restart` once, mid-run (every connection is cut).

Afterwards the study is read back and checked: exactly `--trials` trials counted, none
lost (a trial that began training, or its retries, ends counted), none trained twice (one
counted result per trial and its retries), every enqueued trial run exactly once, nothing
left RUNNING or WAITING, no worker ended but the killed ones. Prints a table (trials a
second, reconnection retries, trials taken for dead, workers lost) and writes JSON to
results/load_test/load_test_<time>.json. For PostgreSQL without --url the script starts a
server of its own (tests/postgres_server.py: Debian's postgresql, initdb + pg_ctl).

Where the time goes (the JSON's `profile`): the workers' CPU seconds a trial, and on a
PostgreSQL server that has pg_stat_statements (the script's own server loads it) the SQL
statements a trial, the server's time a trial, the time spent waiting on the lock by which
Optuna numbers a new trial (SELECT ... FROM studies ... FOR UPDATE), and the statements that
took the most time. README, "Faults at scale", reads them.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def known_value(params: dict) -> float:
    """The stub's validation metric: a fixed function of the parameters."""
    return math.log10(params["learning_rate"]) + params["hidden_size"] / 1000.0 + params["input_noise_std"]


def _worker(cfg_container: dict, sleep: float, worker: int, workers: int, log_dir: str):
    import harness.study.sweep as sweep
    from harness.storage import Reconnects
    from harness.training.train import TrainingResult
    from omegaconf import OmegaConf

    trained = open(os.path.join(log_dir, f"worker_{worker}.txt"), "w")

    def stub_train(trial_cfg, data=None, out_dir=None, log=None, on_epoch=None):
        params = {"learning_rate": float(trial_cfg.learning_rate), "hidden_size": int(trial_cfg.hidden_size),
                  "input_noise_std": float(trial_cfg.input_noise_std)}
        trained.write(f"{out_dir.name} {Reconnects.count}\n")  # a killed worker's retries: its last line
        trained.flush()
        time.sleep(sleep)
        trained.write("done 0\n")
        trained.flush()
        value = known_value(params)
        on_epoch(1, value)
        return TrainingResult(dataset="load", variant="vanilla", recipe="greff", metric="nll", val_metric=value,
                              test_metric=value, best_epoch=1, epochs=1, n_params=1, seconds=sleep, failure=None,
                              hyperparameters={}, train={}, learning_curve=[], data={})

    sweep.train = stub_train
    cfg = OmegaConf.create(cfg_container)
    sys.stdout = open(os.devnull, "w")  # one progress line a trial and worker: too many to show
    try:
        sweep.run_worker(cfg, "vanilla", worker, data="stub", local_workers=workers)
    finally:
        trained.write(f"end {Reconnects.count}\n")
        trained.flush()


def _config(url: str, n_trials: int, heartbeat: float) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "command=sweep", "dataset=jsb_chorales", "variant=vanilla", f"search.storage={url}",
            f"search.n_trials={n_trials}", f"search.heartbeat_seconds={heartbeat}"])
    return OmegaConf.to_container(cfg, resolve=False)


def _statements(url: str, reset: bool = False) -> list | None:
    """pg_stat_statements of the database at `url` (calls, milliseconds, query), after emptying
    it if `reset`; None where the server does not have it."""
    try:
        import psycopg

        with psycopg.connect(url, autocommit=True) as connection:
            if reset:
                connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                connection.execute("SELECT pg_stat_statements_reset()")
                return []
            return connection.execute(
                "SELECT calls, total_exec_time, query FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())").fetchall()
    except Exception:  # no psycopg, no such extension, not loaded (shared_preload_libraries)
        return None


def _short(query: str) -> str:
    """A statement in a few words: its head and its tail (FOR UPDATE, RETURNING ...)."""
    query = " ".join(query.split())
    return query if len(query) <= 120 else f"{query[:70]} ... {query[-45:]}"


def profile(rows: list | None, n: int, cpu_seconds: float) -> dict:
    """Where a trial's time goes: the workers' CPU, and, from pg_stat_statements (`rows`), the
    statements, the server's time, and the wait for Optuna's lock that numbers a new trial."""
    figures = {"worker_cpu_s_per_trial": round(cpu_seconds / n, 4)}
    if rows:
        lock = [ms for _, ms, query in rows if "FROM studies" in query and "FOR UPDATE" in query]
        figures.update({
            "statements_per_trial": round(sum(calls for calls, _, _ in rows) / n, 1),
            "server_ms_per_trial": round(sum(ms for _, ms, _ in rows) / n, 2),
            "trial_number_lock_ms_per_trial": round(sum(lock) / n, 2),
            "top_statements": [{"per_trial": round(calls / n, 2), "ms_per_trial": round(ms / n, 2),
                                "query": _short(query)}
                               for calls, ms, query in sorted(rows, key=lambda row: -row[1])[:5]]})
    return figures


def run(url: str, kind: str, workers: int, n_trials: int, n_enqueue: int, sleep: float, heartbeat: float,
        kill: float = 0.0, server=None, seed: int = 0) -> dict:
    """Run the workers on the storage at `url` and check the study; the figures as a dict.
    `kill`: the fraction of workers killed (SIGKILL) at random times and replaced; `server`
    (a PostgresServer): restarted once mid-run."""
    import optuna
    from optuna.trial import TrialState

    from harness.storage import counted as counted_trials
    from harness.storage import create_study, open_storage, retry_callback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    study = create_study(storage, study_name="jsb_chorales.vanilla", direction="minimize")
    enqueued = []
    for k in range(n_enqueue):
        params = {"hidden_size": 20 + k, "learning_rate": 1e-4, "one_minus_momentum": 0.1,
                  "input_noise_std": k / max(1, n_enqueue)}
        study.enqueue_trial(params, user_attrs={"enqueued": k})
        enqueued.append(params)
    log_dir = tempfile.mkdtemp(prefix="odyssey-load-")
    context = multiprocessing.get_context("fork")  # workers share the imported modules' pages
    import harness.study.sweep  # noqa: F401 (imported once, before the fork)

    cfg = _config(url, n_trials, heartbeat)

    def start(index: int):
        process = context.Process(target=_worker, args=(cfg, sleep, index, workers, log_dir))
        process.start()
        return process

    # The faults' moments, as fractions of the trials begun (read from the workers' logs).
    rng = random.Random(seed)
    kills = sorted(rng.uniform(0.1, 0.8) for _ in range(round(kill * workers)))
    restart_at = 0.45 if server is not None else None
    statements = _statements(url, reset=True) if kind == "postgresql" else None
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    processes = [start(k) for k in range(workers)]
    killed, restarted, restart_seconds = [], False, None
    started = time.time()
    while any(p.is_alive() for p in processes):
        logs = [open(path).read() if os.path.exists(path := os.path.join(log_dir, f"worker_{k}.txt")) else ""
                for k in range(len(processes))]
        progress = sum(log.count("trial_") for log in logs) / n_trials
        if kills and progress >= kills[0]:
            kills.pop(0)
            alive = [p for p in processes if p.is_alive()]
            training = [p for k, p in enumerate(processes)
                        if p.is_alive() and logs[k].rstrip("\n").rsplit("\n", 1)[-1].startswith("trial_")]
            victim = rng.choice(training or alive)  # one that holds a trial, where there is one
            os.kill(victim.pid, signal.SIGKILL)
            victim.join()  # reaped, as the sweep reaps a worker that died
            killed.append(victim)
            processes.append(start(len(processes)))  # its replacement
        if restart_at is not None and not restarted and progress >= restart_at:
            began = time.time()
            server.restart()
            restarted, restart_seconds = True, round(time.time() - began, 2)
        time.sleep(0.1)
    for process in processes:
        process.join()
    wall = time.time() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, joined (and pg_ctl's restart)
    cpu_seconds = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("ru_utime", "ru_stime"))
    statements = _statements(url) if statements is not None else None

    trials = optuna.load_study(study_name="jsb_chorales.vanilla", storage=open_storage(url)).get_trials()
    trained, reconnects = [], 0
    for k in range(len(processes)):
        lines = [line.split() for line in open(os.path.join(log_dir, f"worker_{k}.txt")).read().splitlines()]
        trained += [int(name.split("_")[1]) for name, _ in lines if name.startswith("trial_")]
        reconnects += int(lines[-1][1]) if lines else 0
    shutil.rmtree(log_dir, ignore_errors=True)
    counted = counted_trials(trials)  # the study's own rule (harness.storage.counted)
    by_state = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    wrong_values = [t.number for t in counted if t.state == TrialState.COMPLETE
                    and not math.isclose(t.value, known_value(t.params), rel_tol=1e-12, abs_tol=1e-12)]
    enqueued_runs = [sum(1 for t in counted if t.user_attrs.get("enqueued") == k
                         and all(math.isclose(t.params[p], v) for p, v in enqueued[k].items()))
                     for k in range(n_enqueue)]
    # A trial, its retries (Optuna's retry history) and a late result of any of them are one
    # piece of work: it must end with exactly one counted result once it began.
    callback = retry_callback()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        root = {t.number: (callback.retry_history(t) or [t.number])[0] for t in trials}
    for t in sorted(trials, key=lambda t: t.number):  # a late result's original comes before it
        if t.user_attrs.get("late_result_of") is not None:
            root[t.number] = root[t.user_attrs["late_result_of"]]
    chosen = {t.number for t in counted}
    # finished results that do not count: each repeats the parameters of its work's counted result
    repeats = [t for t in trials if t.state == TrialState.COMPLETE and t.number not in chosen]
    repeats_unmatched = [t.number for t in repeats if not any(
        root[c.number] == root[t.number] and c.params == t.params for c in counted)]
    results_of: dict[int, int] = {}
    for t in counted:
        results_of[root[t.number]] = results_of.get(root[t.number], 0) + 1
    begun = {root[n] for n in trained}
    last_surplus = {}  # root -> whether its last trial was told surplus
    for t in sorted(trials, key=lambda t: t.number):
        last_surplus[root[t.number]] = bool(t.user_attrs.get("surplus"))
    taken_for_dead = [t.number for t in trials if t.state == TrialState.FAIL
                      and not t.user_attrs.get("surplus") and not t.user_attrs.get("lost")]
    killed_pids = {p.pid for p in killed}
    result = {
        "storage": kind, "workers": workers, "n_trials": n_trials, "enqueued": n_enqueue, "sleep_s": sleep,
        "wall_s": round(wall, 2), "trials_per_s": round(len(counted) / wall, 2),
        "ideal_trials_per_s": round(workers / sleep, 2),
        "overhead_s_per_trial": round(max(0.0, wall * workers / max(1, len(counted)) - sleep), 4),
        "counted": len(counted), "repeats": len(repeats), "repeats_unmatched": len(repeats_unmatched),
        "states": by_state, "surplus": sum(bool(t.user_attrs.get("surplus")) for t in trials),
        "workers_killed": len(killed), "server_restarts": int(restarted), "restart_s": restart_seconds,
        "reconnect_retries": reconnects, "taken_for_dead": len(taken_for_dead),
        # lost: begun, and its last retry neither counted nor closed as surplus (the count was reached without it)
        "lost": sum(1 for r in begun if results_of.get(r, 0) == 0 and not last_surplus.get(r)),
        "retries_closed_as_surplus": sum(1 for r in begun if results_of.get(r, 0) == 0 and last_surplus.get(r)),
        "trained_twice": sum(n > 1 for n in results_of.values()) + len(trained) - len(set(trained)),
        "counted_not_trained_once": sum(trained.count(t.number) + ("late_result_of" in t.user_attrs) != 1
                                        for t in counted),
        "wrong_values": len(wrong_values), "enqueued_not_run_once": sum(n != 1 for n in enqueued_runs),
        "workers_lost": sum(1 for p in processes if p.pid not in killed_pids and p.exitcode != 0),
        "worker_exit_codes": sorted({p.exitcode for p in processes if p.pid not in killed_pids}),
        "profile": profile(statements, max(1, len(counted)), cpu_seconds),
    }
    result["ok"] = (result["counted"] == n_trials and not result["repeats_unmatched"] and not result["lost"]
                    and not result["trained_twice"] and not result["counted_not_trained_once"]
                    and not result["wrong_values"] and not result["enqueued_not_run_once"] and by_state["RUNNING"] == 0
                    and by_state["WAITING"] == 0 and not result["workers_lost"])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--trials", type=int, default=None, help="n_trials (default: 8 a worker)")
    parser.add_argument("--enqueue", type=int, default=32)
    parser.add_argument("--sleep", type=float, default=0.5, help="seconds a stub trial takes")
    parser.add_argument("--heartbeat", type=float, default=60.0,
                        help="search.heartbeat_seconds (60, the default; shorter ones under an overload "
                             "get live trials taken for dead, which then run twice)")
    parser.add_argument("--kill", type=float, default=0.1, help="fraction of workers killed with SIGKILL (0: none)")
    parser.add_argument("--no-restart", action="store_true", help="do not restart the PostgreSQL server mid-run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the faults' times and victims")
    parser.add_argument("--storages", default="postgresql,journal")
    parser.add_argument("--url", default=None, help="use this storage (must hold no study yet) instead")
    parser.add_argument("--out", default=str(ROOT / "results" / "load_test"))
    args = parser.parse_args(argv)
    n_trials = args.trials or 8 * args.workers
    results, servers, scratch = [], [], []
    try:
        targets = [(args.url.split(":")[0], args.url, None)] if args.url else []
        for kind in ([] if args.url else args.storages.split(",")):
            if kind == "journal":
                scratch.append(tempfile.mkdtemp(prefix="odyssey-load-"))
                targets.append((kind, f"journal:{scratch[-1]}/load.log", None))
            elif kind == "postgresql":
                from postgres_server import PostgresServer

                try:  # with pg_stat_statements, for the profile (in Debian's postgresql package)
                    servers.append(PostgresServer(settings={"shared_preload_libraries": "pg_stat_statements"}))
                except RuntimeError:
                    servers.append(PostgresServer())
                targets.append((kind, servers[-1].database(), None if args.no_restart else servers[-1]))
            else:
                raise SystemExit(f"unknown storage kind {kind!r}: use postgresql and/or journal")
        for kind, url, server in targets:
            print(f"[load] {kind}: {args.workers} workers, {n_trials} trials ({args.enqueue} enqueued), "
                  f"{args.sleep} s a trial; {round(args.kill * args.workers)} killed"
                  + (", server restarted once" if server else ""), flush=True)
            results.append(run(url, kind, args.workers, n_trials, args.enqueue, args.sleep, args.heartbeat,
                               args.kill, server, args.seed))
    finally:
        for server in servers:
            server.stop()
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)
    columns = ("storage", "workers", "counted", "wall_s", "trials_per_s", "ideal_trials_per_s",
               "workers_killed", "server_restarts", "reconnect_retries", "taken_for_dead", "workers_lost",
               "surplus", "repeats", "lost", "trained_twice", "enqueued_not_run_once", "ok")
    print(" | ".join(columns))
    for result in results:
        print(" | ".join(str(result[c]) for c in columns))
    for result in results:
        shown = {key: value for key, value in result["profile"].items() if key != "top_statements"}
        print(f"[load] {result['storage']} profile: " + ", ".join(f"{key} {value}" for key, value in shown.items()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"load_test_{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"cores": len(os.sched_getaffinity(0)), "results": results}, indent=2))
    print(f"[load] {path}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
