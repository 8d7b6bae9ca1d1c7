"""Processes that open one new, empty storage and create one study at the same moment (a
barrier releases them together); light imports, so that the spawned processes start fast."""

import multiprocessing

import optuna

from harness.storage import create_study, open_storage


def _open_at_once(url, barrier, results, k):
    try:
        barrier.wait(timeout=60)
        storage = open_storage(url, heartbeat_seconds=60)
        study = create_study(storage, study_name="race.vanilla", direction="minimize")
        study.set_user_attr("dataset", "race")
        results.put((k, "ok"))
    except Exception as error:
        results.put((k, f"{type(error).__name__}: {error}"))


def race_on_empty_storage(url, n=6):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(n), context.Queue()
    processes = [context.Process(target=_open_at_once, args=(url, barrier, results, k)) for k in range(n)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    outcomes = dict(results.get(timeout=5) for _ in range(n))
    assert outcomes == {k: "ok" for k in range(n)}
    assert optuna.get_all_study_names(storage=open_storage(url)) == ["race.vanilla"]
