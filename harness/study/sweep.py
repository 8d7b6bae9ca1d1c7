"""Random search: one Optuna study per (data set, model), its workers and their trials.

    odyssey sweep dataset=jsb_chorales variant=cifg search.n_trials=200 \
        search.storage=sqlite:///results/odyssey.db search.workers=2

`sweep(cfg, launch)` checks the config, records or checks each study's protocol
(harness.storage.protocol), and runs `search.workers` worker processes here (or hands them to a
launcher, harness.study.launchers); `run_worker` is one worker: ask, train, tell until the study
has `search.n_trials` counted trials (one at a time, or K at once: `run_lockstep`).
`TrialNumberSampler` draws a trial's parameters and seed from its draw alone (`trial_draw`:
its number, in a study that was never stopped); a trial that a stop ended is redone with
its own (`release`). A trial writes results/sweeps/<storage name>/<study>/trial_N/metrics.json
(`storage_label`).

The rules (what counts, seeds, enqueued trials, liveness, exit statuses, the protocol)
are in docs/training.md, "The trial rules" and "The protocol of a study"; storages,
workers and SLURM in the README, "Sweeps: storage, workers, resuming".
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
import zlib
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import optuna
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from harness import project_root
from harness.datasets import load_dataset
from harness.errors import UserError
from harness.models import ALIASES, canonical, variant_config, variant_configs
from harness.storage import (REDO_ATTR, Liveness, StorageLost, abandon, check_stop, connection_lost, counted,
                             create_study, lineages, move_password, open_storage, protocol, reconnecting, redact,
                             redo_of, stop_on_signals, yields_to)
from harness.study import rounds
from harness.training.engine.native import native_supports
from harness.training.lockstep import (LockstepTrainer, check_lockstep_setting, choose_lockstep, resolve_device,
                                      slot_bytes)
from harness.training.lockstep import covers as lockstep_covers
from harness.training.recipes import Recipe
from harness.training.resources import cap_workers, torch_threads
from harness.training.train import TrainingResult, make_network, train

# The searched parameters and the top-level config key each one sets; a space may also
# search a number of the recipe (train.batch_size, train.weight_decay, ...: `recipe_key`).
PARAMETERS = ("hidden_size", "learning_rate", "one_minus_momentum", "input_noise_std")
NOT_SEARCHABLE = ("eval_batch_size", "threads")  # recipe numbers that do not change a result
PRUNERS = ("none", "median", "hyperband")
EXIT_NO_COMPLETE, EXIT_WORKER_DIED = 3, 4   # exit statuses of a sweep (docs/training.md, "The trial rules")


# -- configuration checks ---------------------------------------------------------------

def recipe_key(recipe, name: str) -> bool:
    """Whether `name` is a number of the recipe `recipe` (cfg.train) that a space may search."""
    if recipe is None or name not in recipe or name in NOT_SEARCHABLE:
        return False
    value = recipe.get(name)  # a number, or null (off) such as max_grad_norm
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def space_of(cfg) -> dict:
    """The distributions a sweep of `cfg` samples: the recipe's own `train.space` when its
    file has one (conf/train/adam.yaml), which replaces search.space; else search.space
    (conf/search/greff.yaml, Greff's)."""
    own = cfg.train.get("space")
    if own is None:
        return search_space(cfg.search.space, recipe=cfg.train)
    return search_space(own, where="train.space", recipe=cfg.train)


def search_space(space_cfg, where: str = "search.space", recipe=None) -> dict:
    """Optuna distributions from `search.space` (or a recipe's `train.space`), with one
    clear message per mistake; `recipe` (cfg.train) says which recipe keys may be searched."""
    space = {}
    optimizer = recipe.get("optimizer", "sgd_nesterov") if recipe is not None else "sgd_nesterov"
    for name, spec in dict(space_cfg).items():
        key = f"{where}.{name}"
        if name == "one_minus_momentum" and optimizer != "sgd_nesterov":
            raise UserError(f"{key}: train={recipe.get('name')} ({optimizer}) has no momentum; search its own keys "
                            f"instead, or use train=greff.")
        if name not in PARAMETERS and not recipe_key(recipe, name):
            known = [*PARAMETERS, *(k for k in (recipe or {}) if recipe_key(recipe, k))]
            raise UserError(f"{key}: unknown parameter '{name}'; the searchable ones are {', '.join(known)}.")
        if spec.get("type") == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, (list, tuple, ListConfig)) or not choices:
                raise UserError(f"{key}: type categorical needs a list of choices, e.g. choices: [4, 8, 16].")
            space[name] = CategoricalDistribution(tuple(choices))
            continue
        kind, low, high, log = spec.get("type", "float"), spec.get("low"), spec.get("high"), bool(spec.get("log", False))
        if not isinstance(low, (int, float)) or not isinstance(high, (int, float)):
            raise UserError(f"{key}: set numeric low and high (got low={low}, high={high}).")
        if low > high:
            raise UserError(f"{key}: low={low} is above high={high}; swap them.")
        if log and low <= 0:
            raise UserError(f"{key}: a log-uniform range needs low > 0 (got {low}); raise low or set log: false.")
        if kind == "int":
            whole = name == "hidden_size" or (name not in PARAMETERS and isinstance(recipe.get(name), int))
            if not whole or int(low) != low or int(high) != high:
                raise UserError(f"{key}: type int needs integer bounds (and an integer key such as hidden_size).")
            space[name] = IntDistribution(int(low), int(high), log=log)
        elif kind == "float":
            if name == "hidden_size":
                raise UserError(f"{key}: hidden_size is a number of blocks; use type: int.")
            space[name] = FloatDistribution(float(low), float(high), log=log)
        else:
            raise UserError(f"{key}: type '{kind}' is unknown; use int, float or categorical.")
    if name_ranges := [n for n in ("one_minus_momentum",) if n in space and (space[n].low <= 0 or space[n].high > 1)]:
        raise UserError(f"{where}.{name_ranges[0]} must lie in (0, 1]: momentum = 1 - value.")
    return space


def storage_label(url: str) -> str:
    """A short name for a storage, for the folders of its trials: the file or database name."""
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    name = name.rsplit(":", 1)[-1].rsplit(".", 1)[0] if "." in name or ":" in name else name
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "storage"


# -- pruning (which trials count: harness.storage.counted) -----------------------------

def make_pruner(search) -> optuna.pruners.BasePruner | None:
    """search.pruner: none, median (optuna.pruners.MedianPruner) or hyperband
    (optuna.pruners.HyperbandPruner), on the per-epoch validation reports."""
    name = str(search.get("pruner", "none"))
    if name not in PRUNERS:
        raise UserError(f"search.pruner={name} is unknown; choose one of {', '.join(PRUNERS)}.")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(search.pruner_startup_trials),
                                           n_warmup_steps=int(search.pruner_warmup_epochs))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, int(search.pruner_warmup_epochs)),
                                              reduction_factor=int(search.pruner_reduction_factor))
    return None


# -- one study --------------------------------------------------------------------------

GREFF = "greff"  # the default recipe: its studies keep the name <dataset>.<variant>


def study_name(dataset: str, variant: str, recipe: str = GREFF) -> str:
    """<dataset>.<variant> for Greff's recipe, <dataset>.<recipe>.<variant> for any other."""
    return f"{dataset}.{variant}" if recipe == GREFF else f"{dataset}.{recipe}.{variant}"


def study_variant(storage, dataset: str, variant: str) -> str:
    """The variant name of the study of model `variant`: its own name, or a former name
    of it (harness.models.ALIASES: gfrnn for gflstm) whose study exists while the study of
    the current name does not, so that an old study is topped up, never started anew."""
    former = [alias for alias, model in ALIASES.items() if model == canonical(variant)]
    if not former:
        return variant
    existing = set(optuna.get_all_study_names(storage))
    if study_name(dataset, canonical(variant)) in existing:
        return canonical(variant)
    return next((alias for alias in former if study_name(dataset, alias) in existing), canonical(variant))


def open_study(storage, dataset: str, variant: str, seed: int, recipe: str = GREFF,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """The study of (dataset, variant, recipe), made if new, with user attributes `dataset`,
    `variant` and `recipe`; `pruner` (make_pruner) prunes its trials."""
    if recipe == GREFF:  # former names of a model exist only among Greff-recipe studies
        variant = study_variant(storage, dataset, variant)
    study = create_study(storage, study_name=study_name(dataset, variant, recipe), direction="minimize",
                         sampler=TrialNumberSampler(seed), pruner=pruner or optuna.pruners.NopPruner())
    for key, value in (("dataset", dataset), ("variant", variant), ("recipe", recipe)):
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    return study


def trial_rng(base_seed: int, study: str, draw: int, name: str) -> np.random.Generator:
    """The random stream of one value of one trial: from the seed, the study's name, the
    trial's draw (`trial_draw`) and the value's name only (not the host, not the worker, not
    timing)."""
    words = [int(base_seed) & 0xFFFFFFFF, zlib.crc32(study.encode()), int(draw),
             zlib.crc32(name.encode())]
    return np.random.default_rng(np.random.SeedSequence(words))


def trial_seed(base_seed: int, study: str, draw: int) -> int:
    """The training seed of the trial of draw `draw` of `study` (recorded as user attribute `seed`)."""
    return int(trial_rng(base_seed, study, draw, "seed").integers(0, 2**31 - 1))


def trial_draw(trials, number: int) -> int:
    """Which draw of the random search trial `number` of `trials` (a study's) trains: a
    retry, or the redo of a lost trial, that of the trial it does the work of (`lineages`);
    any other trial, its number less the redos of lost trials before it, which take a number
    but no draw. So the configurations of a study do not depend on when it was stopped: in
    one never stopped, a trial's draw is its number; in a study from before redos (none
    there), too."""
    root = lineages(trials)[number]
    return root - sum(1 for t in trials if t.number < root and REDO_ATTR in t.system_attrs)


class TrialNumberSampler(optuna.samplers.BaseSampler):
    """Random search whose every draw follows from (seed, study name, the trial's draw
    (`trial_draw`), parameter name): independent uniform draws over each distribution,
    log-uniform where the distribution says log, as Optuna's RandomSampler draws them."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self._draw = (None, None, 0)  # (study, trial number, its draw): found once for all its parameters

    def draw(self, study: optuna.Study, number: int) -> int:
        if self._draw[:2] != (study.study_name, number):
            self._draw = (study.study_name, number, trial_draw(study.get_trials(deepcopy=False), number))
        return self._draw[2]

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        rng = trial_rng(self.seed, study.study_name, self.draw(study, trial.number), param_name)
        d = param_distribution
        if isinstance(d, optuna.distributions.CategoricalDistribution):
            return d.choices[int(rng.integers(len(d.choices)))]
        if isinstance(d, IntDistribution):
            if d.log:  # log-uniform over [low - 1/2, high + 1/2], rounded: each integer its share
                value = math.exp(rng.uniform(math.log(d.low - 0.5), math.log(d.high + 0.5)))
                return int(min(max(round(value), d.low), d.high))
            return int(d.low + d.step * rng.integers((d.high - d.low) // d.step + 1))
        if isinstance(d, FloatDistribution):
            if d.step is not None:
                return float(d.low + d.step * rng.integers(round((d.high - d.low) / d.step) + 1))
            if d.log:
                return float(min(math.exp(rng.uniform(math.log(d.low), math.log(d.high))), d.high))
            return float(min(rng.uniform(d.low, d.high), d.high))
        raise UserError(f"parameter {param_name}: distribution {type(d).__name__} is not supported.")


def trial_config(cfg: DictConfig, params: dict) -> DictConfig:
    """The root config of one trial: the sampled values set as the top-level keys, or as
    the recipe's keys (train.<name>) for the parameters that are not top-level."""
    trial_cfg = cfg.copy()
    with open_dict(trial_cfg):
        for name, value in params.items():
            if name == "one_minus_momentum":
                trial_cfg.momentum = 1.0 - value
            elif name in PARAMETERS:
                trial_cfg[name] = value
            else:
                trial_cfg.train[name] = value
    return trial_cfg


def release(study: optuna.Study, trial: optuna.Trial, liveness: Liveness, error: BaseException) -> None:
    """A trial that `error` ended before its end: FAIL with user attribute `lost` (not counted).

    One that a stop ended (KeyboardInterrupt: Ctrl-C, SIGTERM, a batch system's time limit)
    is redone: its redo (Liveness.redo), its own parameters and seed counted in its place, is
    what the next worker to ask for a trial trains, before any new one; so a stop, which
    catches the long trials, leaves the study's sample as it was. The redo is enqueued here,
    by the worker whose FAIL ended the trial (so by one worker only; a trial that another
    worker failed as stale meanwhile has its retry instead), and, where that did not happen
    (the storage went away, the worker was killed), by the next worker to start
    (Liveness.redo_lost). One that a crash ended is not: it could crash every rerun. One
    stopped by a lost storage connection is failed and retried once the storage answers."""
    if connection_lost(error):
        abandon(study.study_name, trial.number)
        return
    stopped = isinstance(error, KeyboardInterrupt)
    try:
        liveness.mark_lost(study, trial.number, f"stopped: {type(error).__name__}", redo=stopped)
        lost = study.tell(trial, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        return  # failed as stale by another worker (its retry redoes it), or finished
    except Exception as failure:
        if not connection_lost(failure):
            raise
        abandon(study.study_name, trial.number)  # failed and retried once the storage answers again
        return
    if stopped:
        try:
            liveness.redo(study, lost)
        except Exception:  # the storage went away: Liveness.redo_lost enqueues it at the next start
            pass


def _report(trial: optuna.Trial, value: float, epoch: int) -> None:
    try:
        trial.report(value, epoch)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # failed as stale by another worker: train on, the result is kept at the end


def finish_trial(study: optuna.Study, trial: optuna.Trial, liveness: Liveness, state: TrialState,
                 value: float | None, user_attrs: dict) -> None:
    """Tell the study; a trial failed as stale meanwhile keeps its result (Liveness.keep_late_result)."""
    if liveness.state(study, trial.number) == TrialState.RUNNING:
        try:
            for key, item in user_attrs.items():
                trial.set_user_attr(key, item)
            study.tell(trial, value, state=state)
            return
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            if liveness.state(study, trial.number) == TrialState.RUNNING:
                raise
    kept = liveness.keep_late_result(study, trial.number, state, value, user_attrs)
    print(f"[{study.study_name}] trial {trial.number} was taken for dead while it ran; its result is kept "
          + (f"in its retry, trial {kept}" if kept is not None else "as a trial of its own"), flush=True)


def places_ahead(trials, results, roots: dict[int, int], root: int) -> int:
    """The places of the study taken before the work of trial `root`: the pieces of work
    (`lineages`) that started before it and hold a place, by a result that counts, a trial
    running, or a retry or redo waiting. A retry stands where the trial it retries stood, so a
    trial taken for dead keeps its place (its configuration, enqueued by a user or drawn, is
    trained), and a later trial that finds the last place held by a waiting retry gives way."""
    held = {roots[t.number] for t in results}
    held |= {roots[t.number] for t in trials if t.state == TrialState.RUNNING
             or (t.state == TrialState.WAITING and "failed_trial" in t.system_attrs)}
    return sum(1 for other in held if other < root)


def start_trial(study: optuna.Study, trial: optuna.Trial, cfg: DictConfig, target: int) -> DictConfig | None:
    """The root config of a trial, its seed set and recorded (a redo of a lost trial says
    so in one line); None (and the trial told as surplus) if the places before its work are
    taken (`places_ahead`), or if it is a retry whose work has a result meanwhile (the late result of
    the trial it retries: `duplicate_of` it), or a second redo of one lost trial
    (`duplicate_of` the first: harness.storage.yields_to)."""
    trials = study.get_trials(deepcopy=False)
    results, roots = counted(trials), lineages(trials)
    done = [t.number for t in results if roots[t.number] == roots[trial.number]]
    done += [first] if (first := yields_to(trials, trial.number)) is not None else []  # a second redo of one trial
    # its work is done, or no place is left before it
    if done or places_ahead(trials, results, roots, roots[trial.number]) >= target:
        trial.set_user_attr("surplus", True)
        if done:
            trial.set_user_attr("duplicate_of", done[0])
        study.tell(trial, state=TrialState.FAIL)
        return None
    trial_cfg = trial_config(cfg, dict(trial.params))
    seed = int(trial.user_attrs.get("seed", trial_seed(int(cfg.seed), study.study_name,
                                                       trial_draw(trials, trial.number))))
    with open_dict(trial_cfg):
        trial_cfg.seed = seed
    trial.set_user_attr("seed", seed)
    lost = redo_of(next(t for t in trials if t.number == trial.number))
    if lost is not None:
        print(f"[{study.study_name}] trial {lost} was lost at the stop; redoing it as trial {trial.number} "
              "with its own parameters and seed", flush=True)
    return trial_cfg


def tell_result(study: optuna.Study, trial: optuna.Trial, trial_cfg: DictConfig, liveness: Liveness,
                result: TrainingResult, out_dir: Path) -> None:
    """Tell a finished training: COMPLETE with its validation metric, or FAIL with `failure`."""
    attrs = {**result.trial_attributes(), "seed": int(trial_cfg.seed), "metrics": str(out_dir / "metrics.json")}
    if Recipe.from_config(trial_cfg).optimizer == "sgd_nesterov":
        attrs["momentum"] = float(trial_cfg.momentum)
    if result.failure or result.val_metric is None:
        attrs["failure"] = result.failure or "no finite validation metric"
        finish_trial(study, trial, liveness, TrialState.FAIL, None, attrs)
    else:
        finish_trial(study, trial, liveness, TrialState.COMPLETE, result.val_metric, attrs)


def tell_pruned(study: optuna.Study, trial: optuna.Trial, seed: int, liveness: Liveness,
                reported: list[int], seconds: float) -> dict:
    """Tell a trial the pruner stopped (counted, out of the analysis's fANOVA)."""
    attrs = {"seed": seed, "epochs": len(reported), "seconds": seconds, "pruned_at_epoch": reported[-1]}
    finish_trial(study, trial, liveness, TrialState.PRUNED, None, attrs)
    return {"pruned": True, "failure": None, "epochs": len(reported), "seconds": seconds}


def reporter(trial: optuna.Trial, reported: list[int]):
    """on_epoch of a trial's training: report the validation metric, and prune if the pruner says so."""
    # search.pruner=none (Optuna's NopPruner) never prunes: not asked, which would read the trial
    # (and the study's directions) from the storage every epoch
    prunes = not isinstance(trial.study.pruner, optuna.pruners.NopPruner)

    def on_epoch(epoch: int, value: float) -> None:
        check_stop()
        _report(trial, value, epoch)
        check_stop()  # a stop held back during the report's write (storage.check_stop)
        reported.append(epoch)
        if prunes and trial.should_prune():  # search.pruner
            raise optuna.TrialPruned()
    return on_epoch


def run_trial(study: optuna.Study, trial: optuna.Trial, cfg: DictConfig, data, out_dir: Path,
              target: int, liveness: Liveness) -> TrainingResult | dict | None:
    """Train the trial's configuration and tell the study; None if the trial was surplus,
    {"pruned": True, ...} if the pruner stopped it."""
    trial_cfg = start_trial(study, trial, cfg, target)
    if trial_cfg is None:
        return None
    check_stop()  # a stop held back during the writes that started the trial: not after a first long epoch
    started, reported = time.perf_counter(), []
    try:
        result = train(trial_cfg, data=data, out_dir=out_dir, log=lambda message: None,
                       on_epoch=reporter(trial, reported))
    except optuna.TrialPruned:
        return tell_pruned(study, trial, int(trial_cfg.seed), liveness, reported, time.perf_counter() - started)
    tell_result(study, trial, trial_cfg, liveness, result, out_dir)
    return result


def trial_line(tag: str, study: optuna.Study, trial, result, target: int, rate: float, trials=None) -> str:
    """The progress line of a finished trial; `trials`: the study's trials as just read (else read here)."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    done = len(counted(trials))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = f", best val {min(t.value for t in complete):.4f}" if complete else ""
    shown = ", ".join(f"{k}={v:.3g}" for k, v in trial.params.items())
    outcome = ("pruned" if result.get("pruned") else f"FAILED ({result['failure']})" if result["failure"]
               else f"val {result['val_metric']:.4f} test {result['test_metric']:.4f}")
    return (f"{tag} trial {trial.number}: {shown} -> {outcome}, {result['epochs']} epochs, "
            f"{result['seconds']:.0f} s | {done}/{target} done{best} | {rate:.1f} trials/hour")


def largest_network(cfg: DictConfig, space: dict, data, end=max):
    """The network of the largest hidden size the search may draw (for a slot's memory);
    `end=min`: of the smallest."""
    distribution = space.get("hidden_size")
    if isinstance(distribution, IntDistribution):
        hidden = end(distribution.low, distribution.high)
    elif isinstance(distribution, CategoricalDistribution):
        hidden = end(int(c) for c in distribution.choices)
    else:
        hidden = int(cfg.hidden_size)
    sized = cfg.copy()
    with open_dict(sized):
        sized.hidden_size = hidden
    return make_network(sized, data)


def lockstep_plan(cfg: DictConfig, space: dict, data, trials_left: int, say=None) -> tuple[int, object] | None:
    """(K, device) of a lockstep worker for this model, or None: one trial at a time (the
    per-trial engine: search.lockstep=1 on the CPU, or a model or recipe lockstep does not
    cover, which is said once). A device that is not the CPU always trains through lockstep."""
    device = resolve_device(cfg.train.get("device", "cpu"))
    setting = check_lockstep_setting(cfg.search.get("lockstep", 1))
    if setting == 1 and device.type == "cpu":
        return None
    network = largest_network(cfg, space, data)
    reason = lockstep_covers(cfg, network)
    if reason is not None:
        if device.type != "cpu":
            raise UserError(f"train.device={cfg.train.device}: lockstep, the path of every device but the CPU, "
                            f"does not cover {reason}; use train.device=cpu for it.")
        (say or (lambda message: print(message, flush=True)))(f"[{cfg.variant.name}] search.lockstep={setting}: lockstep does not cover {reason}; its trials train "
            "one at a time")
        return None
    slots = choose_lockstep(setting, device, slot_bytes(network, data), trials_left)
    return (slots, device) if slots > 1 or device.type != "cpu" else None


def run_lockstep(study: optuna.Study, cfg: DictConfig, space: dict, data, out_root: Path, target: int,
                 liveness: Liveness, slots: int, device, tag: str) -> None:
    """A worker of `slots` trials at once (harness.training.lockstep): a free slot asks the study for
    a trial, and each trial is told as soon as its slot ends."""
    trainer = LockstepTrainer(data, slots, device, log=lambda message: None)
    live: dict[int, tuple] = {}  # trial number -> (trial, its config, heartbeat, reported epochs, start)
    print(f"{tag} lockstep: {slots} trial(s) at once on {device}", flush=True)
    started, done_here = time.time(), 0
    try:
        while True:
            check_stop()
            liveness.fail_stale(study)
            while trainer.free > 0:
                trials = study.get_trials(deepcopy=False)
                done = len(counted(trials))
                if done + sum(t.state == TrialState.RUNNING for t in trials) >= target:
                    break
                beat = ExitStack()
                try:
                    trial = liveness.ask(study, space)
                    beat.enter_context(liveness.alive(study, trial.number))
                    trial_cfg = start_trial(study, trial, cfg, target)
                except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale before it began
                    beat.close()
                    continue
                if trial_cfg is None:
                    beat.close()
                    continue
                reported = []
                live[trial.number] = (trial, trial_cfg, beat, reported, time.perf_counter())
                trainer.add(trial_cfg, trial.number, on_epoch=reporter(trial, reported),
                            out_dir=out_root / f"trial_{trial.number:04d}")
            if not len(trainer):
                if len(counted(study.get_trials(deepcopy=False))) >= target:
                    liveness.close_retries(study)
                    return
                time.sleep(min(liveness.interval, 5.0))  # the last trials are running elsewhere
                continue
            for number, outcome in trainer.run_epoch():
                trial, trial_cfg, beat, reported, begun = live.pop(number)
                if isinstance(outcome, optuna.TrialPruned):
                    result = tell_pruned(study, trial, int(trial_cfg.seed), liveness, reported,
                                         time.perf_counter() - begun)
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    result = outcome
                    tell_result(study, trial, trial_cfg, liveness, result, out_root / f"trial_{number:04d}")
                beat.close()
                done_here += 1
                rate = done_here / max(time.time() - started, 1e-9) * 3600
                print(trial_line(tag, study, trial, result, target, rate), flush=True)
    except BaseException as error:  # Ctrl-C, SIGTERM, a crash: the running trials are lost, not counted
        for trial, _, beat, _, _ in live.values():
            release(study, trial, liveness, error)
            beat.close()
        raise


def run_worker(cfg: DictConfig, variant: str, worker: int = 0, data=None, local_workers: int = 1) -> None:
    """Ask, train and tell until the study has search.n_trials counted trials; one of
    `local_workers` processes on this machine (for its torch threads). A lost storage
    connection is retried with a bounded back-off (harness.storage.reconnecting)."""
    reconnecting(lambda: work(cfg, variant, worker, data, local_workers), f"worker {worker} of {variant}",
                 float(cfg.search.get("reconnect_seconds", 120)))


def work(cfg: DictConfig, variant: str, worker: int = 0, data=None, local_workers: int = 1) -> None:
    """run_worker's loop, from opening the storage."""
    search = cfg.search
    dataset = cfg.dataset.name
    if cfg.variant.name != canonical(variant):  # a model of search.variants: its own config
        with open_dict(cfg):
            cfg.variant = variant_config(cfg, canonical(variant))
    space = space_of(cfg)
    with open_dict(cfg):  # train.threads: auto -> this worker's share of the cores
        cfg.train.threads = torch_threads(cfg.train.get("threads"), local_workers)
    storage = open_storage(search.storage, heartbeat_seconds=float(search.heartbeat_seconds))
    liveness = Liveness(storage, float(search.heartbeat_seconds))
    target, beat = int(search.n_trials), liveness.interval
    study = open_study(storage, dataset, variant, seed=int(cfg.seed), recipe=str(cfg.train.name),
                       pruner=make_pruner(search))
    protocol.keep(study, cfg, space)  # a SLURM node's own data files are checked too
    liveness.redo_lost(study, target)  # trials lost at a stop whose redo was not enqueued then
    data = data if data is not None else load_dataset(cfg.dataset)
    out_root = project_root() / "results" / "sweeps" / storage_label(search.storage) / study.study_name
    tag = f"[{study.study_name} w{worker}]"
    left = target - len(counted(study.get_trials(deepcopy=False)))
    plan = lockstep_plan(cfg, space, data, left)
    if plan is not None:
        torch.set_num_threads(int(cfg.train.threads))
        torch.set_flush_denormal(bool(cfg.train.get("flush_denormal", True)))
        run_lockstep(study, cfg, space, data, out_root, target, liveness, *plan, tag)
        return
    started, done_here = time.time(), 0
    trials = None  # the study's trials as read at the end of the last pass, if it read them
    while True:
        check_stop()
        # One read of the study a pass, judged for stale trials and counted: on a database
        # server every read of it fetches each unfinished trial (README, "Faults at scale").
        trials = study.get_trials(deepcopy=False) if trials is None else trials
        if liveness.fail_stale(study, trials):  # it failed some and enqueued their retries
            trials = study.get_trials(deepcopy=False)
        done = len(counted(trials))
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if done >= target:
            liveness.close_retries(study)
            break
        trials = None
        if done + running >= target:  # the last trials are running elsewhere
            time.sleep(min(beat, 5.0))
            continue
        try:
            trial = liveness.ask(study, space)
        except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale while being created
            continue
        try:
            with liveness.alive(study, trial.number):  # from the start: a trial without beats looks dead
                result = run_trial(study, trial, cfg, data, out_root / f"trial_{trial.number:04d}", target, liveness)
        except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale before it began: its retry runs it
            print(f"{tag} trial {trial.number} was taken for dead before it began; its retry runs it", flush=True)
            continue
        except BaseException as error:  # Ctrl-C, SIGTERM, a crash: the trial is lost, not counted
            release(study, trial, liveness, error)
            raise
        if result is None:
            continue
        done_here += 1
        rate = done_here / max(time.time() - started, 1e-9) * 3600
        trials = study.get_trials(deepcopy=False)  # for the progress line and the next pass
        print(trial_line(tag, study, trial, result, target, rate, trials), flush=True)


def _worker_process(cfg_container: dict, variant: str, worker: int, workers: int = 1) -> None:
    """Entry point of a worker process; SIGTERM stops it like Ctrl-C: its trial is released,
    then the process leaves at once (os._exit), without the interpreter's finalization: in
    a worker that holds torch and a study's objects (365,000 of them, measured) it took more
    than 5 s on two busy cores, the whole of the sweep's former grace, and the worker was
    killed. Every storage write is committed by then."""
    stop_on_signals(signal.SIGTERM, signal.SIGINT)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        run_worker(OmegaConf.create(cfg_container), variant, worker, local_workers=workers)
    except KeyboardInterrupt:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    except UserError as error:
        print(f"[worker {worker}] error: {error}", flush=True)
        raise SystemExit(2)
    except StorageLost as error:
        print(f"[worker {worker}] error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_WORKER_DIED)


def _ending(process) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


STOP_GRACE = 10.0  # seconds a stopped worker has to release its trial before SIGKILL


def _stop(processes, grace: float = STOP_GRACE) -> None:
    """SIGTERM every worker (each releases its trial and leaves), then SIGKILL what is left
    after `grace`: a worker stuck in a long call (a storage that does not answer)."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.time() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.time()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()


def run_processes(cfg: DictConfig, variant: str, workers: int) -> list[str]:
    """`workers` worker processes on one study; returns a line for each that died."""
    context = multiprocessing.get_context("spawn")
    container = OmegaConf.to_container(cfg, resolve=True)
    processes = [context.Process(target=_worker_process, args=(container, variant, k, workers), daemon=False)
                 for k in range(workers)]
    died = []
    try:
        for process in processes:
            process.start()
        waiting = list(processes)
        while waiting:
            check_stop()
            multiprocessing.connection.wait([p.sentinel for p in waiting], timeout=1.0)
            for process in [p for p in waiting if not p.is_alive()]:
                waiting.remove(process)
                process.join()
                if process.exitcode != 0:
                    died.append(f"worker {processes.index(process)} (pid {process.pid}) {_ending(process)}")
                    print(f"odyssey sweep: {died[-1]}; the other workers go on", file=sys.stderr, flush=True)
    except BaseException:  # Ctrl-C, SIGTERM: stop every worker within seconds
        _stop(processes)
        raise
    return died


def check_batch_sizes(cfg, space: dict, n_train: int, dataset: str) -> None:
    """No batch size, fixed or searched, larger than the training split."""
    sizes = {int(cfg.train.get("batch_size", 1))} if "batch_size" not in space else set()
    if isinstance(space.get("batch_size"), CategoricalDistribution):
        sizes = {int(c) for c in space["batch_size"].choices}
    elif "batch_size" in space:
        sizes = {int(space["batch_size"].high)}
    if sizes and max(sizes) > n_train:
        where = "train.space" if cfg.train.get("space") is not None else "search.space"
        key = "train.batch_size" if "batch_size" not in space else f"{where}.batch_size"
        raise UserError(f"{key}: {max(sizes)} is larger than the training split of {dataset} ({n_train} sequences); "
                        f"choose at most {n_train}.")


def sweep(cfg: DictConfig, launch=None) -> list[str]:
    """Run the sweep the config asks for; returns the names of the studies.

    `launch(cfg, variants)` runs the workers elsewhere when search.launcher says so and
    returns the study names, or None for local workers: harness.study.launchers.launch, which
    the command line passes in (the launchers build on this module, not the reverse).
    Without it the workers run on this machine."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stop_on_signals(signal.SIGTERM)  # `kill` or a batch system's time limit: stop cleanly
    configs = variant_configs(cfg)  # search.variants, or just `variant`; a bad model fails here
    with open_dict(cfg):  # so that every worker (here or a SLURM task) has each model's config
        cfg.search.variants = configs
        cfg.search.storage = move_password(cfg.search.storage)  # a password goes to PGPASSWORD, never on
    variants = [config["name"] for config in configs]
    rounds.check(cfg, variants)  # search.until
    search = cfg.search
    space = space_of(cfg)  # fail on a bad space or pruner before any work
    make_pruner(search)
    recipe = str(cfg.train.name)
    workers = int(search.workers)
    if workers < 1 or int(search.n_trials) < 1:
        raise UserError("search.workers and search.n_trials must be positive integers.")
    torch_threads(cfg.train.get("threads"))  # a bad train.threads fails here, before any work
    if launch is None and search.get("launcher", "local") != "local":
        raise UserError(f"search.launcher={search.launcher}: pass harness.study.launchers.launch to sweep() "
                        "(odyssey sweep does).")
    if launch is not None and (launched := launch(cfg, variants)) is not None:  # e.g. a SLURM array job
        return launched
    workers = cap_workers(workers)
    storage = open_storage(search.storage)
    data = load_dataset(cfg.dataset)  # check the data once, before any worker starts
    check_batch_sizes(cfg, space, len(data.train), data.name)
    for config in configs:  # a device or a lockstep this machine cannot give: one line now, not in a worker
        checked = cfg.copy()
        with open_dict(checked):
            checked.variant = config
        lockstep_plan(checked, space_of(checked), data, int(search.n_trials), say=lambda message: None)
        if config.get("cell") is not None:  # a cell given as a class (harness.models.cell_class): built and probed now
            network = largest_network(checked, space_of(checked), data, end=min)
            largest_network(checked, space_of(checked), data)
            if str(cfg.train.get("engine", "native")) == "native":
                print(f"[{config['name']}] engine: the native engine does not cover "
                      f"{native_supports(network, data.task)}; its trials train on the torch path", flush=True)
        protocol.keep(open_study(storage, cfg.dataset.name, config["name"], seed=0, recipe=recipe), checked,
                      space_of(checked))  # the study's protocol (harness.storage.protocol), before any work
    print(f"sweep: {cfg.dataset.name}, variants {', '.join(variants)}, {search.n_trials} trials each, "
          f"{workers} worker(s), storage {redact(search.storage)}", flush=True)
    names, died, without_complete = {}, [], {}

    def top_up(name: str, target: int) -> None:  # the variant's study to `target` counted trials
        study = open_study(storage, cfg.dataset.name, name, seed=0, recipe=recipe)
        done = len(counted(study.get_trials(deepcopy=False)))
        former = study.user_attrs.get("variant") != name  # a study of the model's former name (gfrnn)
        print(f"{study.study_name}: {done}/{target} trials already done"
              + (f" (a study of {name} under its former name)" if former else ""), flush=True)
        round_cfg = cfg.copy()
        with open_dict(round_cfg):
            round_cfg.search.n_trials = target
        if workers == 1:
            run_worker(round_cfg, name, 0, data=data)
        else:
            try:
                died.extend(run_processes(round_cfg, name, workers))
            finally:  # the trial of a worker that died (or was killed at a stop) is not left RUNNING
                Liveness(storage, float(search.heartbeat_seconds)).fail_stale(study)
        study = open_study(storage, cfg.dataset.name, name, seed=0, recipe=recipe)
        results = counted(study.get_trials(deepcopy=False))
        complete = [t for t in results if t.state == TrialState.COMPLETE]
        pruned = sum(t.state == TrialState.PRUNED for t in results)
        best = min(complete, key=lambda t: t.value) if complete else None
        print(f"{study.study_name}: {len(results)} trials counted "
              f"({len(complete)} complete, {pruned} pruned, {len(results) - len(complete) - pruned} diverged)"
              + (f", best val {best.value:.4f} / test {best.user_attrs.get('test_metric'):.4f}" if best else ""),
              flush=True)
        without_complete[name] = None if complete else study.study_name
        names[name] = study.study_name

    if search.get("until", "n_trials") == "decided":
        rounds.run(cfg, variants, top_up, lambda name: open_study(storage, cfg.dataset.name, name, seed=0,
                                                                  recipe=recipe))
    else:
        for name in variants:
            top_up(name, int(search.n_trials))
    for name in variants:  # a variant decided before this run got no round
        names.setdefault(name, open_study(storage, cfg.dataset.name, name, seed=0, recipe=recipe).study_name)
    without_complete = [study for study in without_complete.values() if study]
    if died:
        print(f"odyssey sweep: error: {len(died)} worker(s) died: {'; '.join(died)}. Finished trials are kept; "
              "run the same command to top the studies up.", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_WORKER_DIED)
    if without_complete:
        print(f"odyssey sweep: no trial completed in {', '.join(without_complete)} (every trial diverged or was "
              "lost); try a smaller search.space.learning_rate range.", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_NO_COMPLETE)
    return list(names.values())
