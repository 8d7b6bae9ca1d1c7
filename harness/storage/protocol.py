"""The protocol of a study: what defines its trials, recorded when the study is made and
checked whenever a sweep goes on with it (docs/training.md, "The protocol of a study").

    keep(study, cfg, space)                # what a sweep calls for each of its studies
    protocol = describe(cfg, space)        # a JSON-able dict
    check(study, protocol, allow=False)    # record it, or refuse (UserError) a different one

The protocol is the study user attribute `protocol`: the search space (each parameter's
type, range, log flag or choices), the values of the top-level parameters it does not
search, the recipe and its keys that change results, the variant's config, `max_epochs`,
`patience`, and the data set's identity (its name, its reader settings and a fingerprint
of its files' paths and sizes). A sweep whose protocol differs is refused in one line
naming the first key that differs, unless `search.protocol_change=allow`: then the change
is appended to the study user attribute `protocol_changes` (from which trial number on, the
key, both values) and the new protocol is recorded; the analysis calls such a study mixed.

A study without the attribute (made before odyssey recorded it, or by another tool) is
checked against what its trials say (their distributions) and then gets the attribute,
with `protocol_from_trial` saying that the trials before that number were not recorded.
A key of the recipe, the variant or the data set's settings that the recorded protocol
lacks (one a later odyssey added) is not compared.

`keep` also records the data set's task (study user attribute `task`: music, speech,
handwriting or null, harness.datasets.task_kind), which the analysis reads. It is not part
of the protocol: it decides how trials are judged, not what they are, so it follows the
data set's config (its `domain` key) at every sweep.

For those who watch a study in optuna-dashboard (README, "Watching a sweep"), `keep` also
names the objective with Optuna's metric names (`objective_name`: the task's validation
metric, e.g. val_nll) and writes `protocol_summary`, the recorded protocol in one line
(`summary`), beside the full record, which the dashboard shows as one long JSON string. A
study made before either gets them at its next sweep.
"""

from __future__ import annotations

import hashlib
import json
import warnings

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from harness.datasets import resolve_path, task_kind
from harness.errors import UserError

PROTOCOL, CHANGES, FROM_TRIAL = "protocol", "protocol_changes", "protocol_from_trial"   # study user attributes
TASK = "task"   # study user attribute: the data set's task for the analysis (harness.datasets.task_kind)
SUMMARY = "protocol_summary"   # study user attribute: the protocol in one line, for optuna-dashboard
VERSION = 1
# Recipe keys that do not change a result: where and how fast it runs (equivalent engines,
# threads, evaluation batch, flushing denormals: docs/engine.md), the recipe's name (the
# study's name says it) and its space (recorded as the space).
NOT_RESULT_KEYS = {"name", "eval_batch_size", "threads", "engine", "device", "flush_denormal", "space"}
# Data set keys that locate or cache the files, or say how trials are judged (domain),
# rather than define them.
NOT_DATA_KEYS = {"name", "path", "cache_dir", "generate", "domain"}
# Where a flattened key comes from, for the message: the config key a user sets.
LENIENT = ("recipe.", "variant.", "dataset.settings.")


def distribution(d) -> dict:
    """One Optuna distribution as a plain dict (type, low, high, log; or choices)."""
    if isinstance(d, CategoricalDistribution):
        return {"type": "categorical", "choices": list(d.choices)}
    if isinstance(d, IntDistribution):
        return {"type": "int", "low": int(d.low), "high": int(d.high), "log": bool(d.log)}
    if isinstance(d, FloatDistribution):
        return {"type": "float", "low": float(d.low), "high": float(d.high), "log": bool(d.log)}
    return {"type": type(d).__name__}


def files_fingerprint(path) -> str:
    """'<n> files, <bytes> bytes, <hash>': the relative paths and sizes of the data set's files
    (a file, or every file under a folder but hidden ones), hashed; cheap (no file is read)."""
    root = resolve_path(path)
    if root.is_file():
        listing = [(root.name, root.stat().st_size)]
    elif root.is_dir():
        listing = sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*")
                         if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    else:
        listing = []
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    return f"{len(listing)} files, {sum(size for _, size in listing)} bytes, {digest}"


def _plain(value):
    from omegaconf import OmegaConf

    if hasattr(value, "_metadata"):  # a DictConfig or ListConfig
        return OmegaConf.to_container(value, resolve=True)
    return value


def describe(cfg, space: dict) -> dict:
    """The protocol of a sweep of `cfg` over `space` (harness.study.sweep.space_of)."""
    recipe = {k: v for k, v in _plain(cfg.train).items() if k not in NOT_RESULT_KEYS}
    fixed = {name: _plain(cfg.get(name)) for name in ("hidden_size", "learning_rate", "input_noise_std")
             if name not in space}
    if "one_minus_momentum" not in space and cfg.train.get("optimizer", "sgd_nesterov") == "sgd_nesterov":
        fixed["momentum"] = _plain(cfg.get("momentum"))
    dataset = _plain(cfg.dataset)
    return {
        "version": VERSION,
        "space": {name: distribution(d) for name, d in sorted(space.items())},
        "fixed": fixed,
        "recipe": {"name": str(cfg.train.name), **recipe},
        "variant": {k: v for k, v in _plain(cfg.variant).items() if k != "name"},
        "max_epochs": int(cfg.max_epochs),
        "patience": int(cfg.patience),
        "dataset": {"name": str(dataset.get("name")), "files": files_fingerprint(dataset.get("path", "")),
                    "settings": {k: v for k, v in dataset.items() if k not in NOT_DATA_KEYS}},
    }


def flatten(value, prefix: str = "") -> dict:
    """{'space.hidden_size.high': 200, ...}: every leaf under its dotted key."""
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def first_difference(recorded: dict, current: dict) -> tuple[str, object, object] | None:
    """(key, recorded value, current value) of the first key that differs, or None."""
    old, new = flatten(recorded), flatten(current)
    for key in [*old, *(k for k in new if k not in old)]:
        if key == "version":
            continue
        if key not in old and key.startswith(LENIENT):
            continue  # a key odyssey added after the study was made
        if old.get(key, "(not set)") != new.get(key, "(not set)"):
            return key, old.get(key, "(not set)"), new.get(key, "(not set)")
    return None


def config_key(key: str, space_key: str = "search.space") -> str:
    """The config key a user sets for a flattened protocol key."""
    for prefix, user in (("space.", f"{space_key}."), ("recipe.", "train."), ("fixed.", ""),
                         ("variant.", "variant."), ("dataset.settings.", "dataset.")):
        if key.startswith(prefix):
            return user + key[len(prefix):]
    if key == "dataset.files":
        return "the files of dataset.path"
    return key


def trials_space(study) -> dict:
    """{parameter: distribution dict} of the study's finished trials (a running or failed one
    may hold only some of its parameters), from the last trial that has each."""
    space = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        for name, d in trial.distributions.items():
            space[name] = distribution(d)
    return space


def mixed_reason(user_attrs: dict, trials) -> str | None:
    """Why a study's trials do not share one protocol, or None: a change recorded with
    search.protocol_change=allow, or trials whose distributions of a parameter differ."""
    changes = user_attrs.get(CHANGES) or []
    if changes:
        first = changes[0]
        return (f"its protocol changed {len(changes)} time(s) (search.protocol_change=allow), first from trial "
                f"{first.get('from_trial')} on: {first.get('key')} {first.get('was')!r} -> {first.get('now')!r}")
    seen: dict[str, set] = {}
    for trial in trials:
        for name, d in trial.distributions.items():
            seen.setdefault(name, set()).add(json.dumps(distribution(d), sort_keys=True))
    differ = sorted(name for name, kinds in seen.items() if len(kinds) > 1)
    if differ:
        return f"its trials were drawn from different distributions of {', '.join(differ)}"
    return None


def check(study, protocol: dict, allow: bool = False, space_key: str = "search.space") -> None:
    """Record `protocol` on a new study (or an old one without it); refuse a study recorded
    with another (UserError naming the first key that differs), or record the change when
    `allow`. `space_key` is the config key of the space (search.space or train.space)."""
    recorded = study.user_attrs.get(PROTOCOL)
    trials = study.get_trials(deepcopy=False)
    if recorded is None:
        earlier = trials_space(study)
        difference = first_difference({"space": earlier}, {"space": protocol["space"]}) if earlier else None
    else:
        difference = first_difference(recorded, protocol)
    if difference is not None and recorded is None and study.user_attrs.get(PROTOCOL) is not None:
        return check(study, protocol, allow, space_key)  # another sweep recorded it meanwhile: compare with that
    if difference is not None:
        key, was, now = difference
        name = config_key(key, space_key)
        source = "was made with" if recorded is not None else "has trials drawn with"
        if not allow:
            raise UserError(
                f"study {study.study_name} {source} {name}={was}, this sweep has {now}; a study is one protocol: "
                "sweep into a new study (another search.storage, or another dataset name, variant or recipe), "
                f"set {name} back, or pass search.protocol_change=allow to go on and have the change recorded "
                "(the analysis then calls the study mixed).")
        changes = list(study.user_attrs.get(CHANGES) or [])
        changes.append({"from_trial": len(trials), "key": name, "was": was, "now": now})
        study.set_user_attr(CHANGES, changes)
        print(f"{study.study_name}: protocol changed ({name}: {was} -> {now}) from trial {len(trials)} on; "
              "recorded (search.protocol_change=allow)", flush=True)
    if recorded != protocol:
        if recorded is None:
            study.set_user_attr(FROM_TRIAL, len(trials))
        study.set_user_attr(PROTOCOL, protocol)
        # Two sweeps that made the study at the same moment: the one whose record lost refuses.
        if not allow and study.user_attrs.get(PROTOCOL) != protocol:  # read back from the storage
            check(study, protocol, allow, space_key)


CHOICES = ("refuse", "allow")   # search.protocol_change


def keep(study, cfg, space: dict) -> None:
    """check() the protocol of a sweep of `cfg` (its variant set) over `space` on `study`,
    as search.protocol_change says; record the data set's task (TASK) and the protocol in
    one line (SUMMARY), and name the objective (`objective_name`)."""
    choice = str(cfg.search.get("protocol_change", "refuse"))
    if choice not in CHOICES:
        raise UserError(f"search.protocol_change={choice} is unknown; use refuse (the default) or allow.")
    space_key = "train.space" if cfg.train.get("space") is not None else "search.space"
    check(study, describe(cfg, space), allow=choice == "allow", space_key=space_key)
    attrs = study.user_attrs
    task = task_kind(cfg.dataset)
    if TASK not in attrs or attrs[TASK] != task:
        study.set_user_attr(TASK, task)
    line = summary(attrs[PROTOCOL], len(attrs.get(CHANGES) or []))
    if attrs.get(SUMMARY) != line:
        study.set_user_attr(SUMMARY, line)
    names = [objective_name(cfg.dataset.task)]
    if study.metric_names != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # Optuna 5 still calls it experimental
            study.set_metric_names(names)


def objective_name(task: str) -> str:
    """The name of a study's objective, the validation metric of the data set's task (e.g. val_nll)."""
    from harness.training.tasks import METRICS  # here: the analysis reads this module without torch

    return f"val_{METRICS[task]}"


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def summary(record: dict, changes: int = 0) -> str:
    """A protocol record (`describe`) in one line: the data set, the recipe, the searched
    ranges, the values held fixed, the training length and the changes recorded, e.g.
    'jsb_chorales (1 files, 407200 bytes); recipe greff; hidden_size 20..200 log, ...;
    max_epochs 150, patience 15'."""
    files = str(record["dataset"].get("files", "")).rsplit(",", 1)[0]
    space = []
    for name, d in record["space"].items():
        if d.get("type") == "categorical":
            space.append(f"{name} in {{{', '.join(map(_number, d['choices']))}}}")
        else:
            space.append(f"{name} {_number(d.get('low'))}..{_number(d.get('high'))}" + (" log" if d.get("log") else ""))
    parts = [f"{record['dataset']['name']} ({files})", f"recipe {record['recipe']['name']}", ", ".join(space)]
    if record.get("fixed"):
        parts.append(", ".join(f"{name}={_number(value)}" for name, value in record["fixed"].items()))
    parts.append(f"max_epochs {record['max_epochs']}, patience {record['patience']}")
    if changes:
        parts.append(f"changed {changes} time(s): mixed ({CHANGES})")
    return "; ".join(parts)
