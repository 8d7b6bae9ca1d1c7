"""Checks of the command line and the composed config, before any work (called by harness.cli).

Two steps, each ending a mistake with one UserError sentence that names the key or file:

- `check_arguments` (before Hydra runs): every override parses; a key that is set, added
  (`+key=...`) or removed (`~key`) is checked against the config composed with the
  same config groups (conf/ and a user's --config-dir or hydra.searchpath): a key that
  does not exist is named with the nearest ones, not with Hydra's advice to add a `+`
  (which would only make odyssey ignore the value); `+key` is for keys odyssey reads but
  a config leaves out (a reader's options, dataset.CONFIG_KEYS, or a new search.space
  parameter); `~key` removes a parameter from search.space or a reader's option, and
  nothing else (every other key is read). A config file that is not valid YAML is named.
  Then the config is composed with every override, so that Hydra checks the search and
  analysis values against their structured configs (harness.schema): a value of the
  wrong type is named with its key, and a boolean of the schemas is true or false only.
- `check_config` (on the composed config): every other key has the type of the same key
  in conf/'s shipped configs, the schema's where a user's own search or analysis config
  does without it (a boolean is true or false, never the string 'false'; an integer is
  not 2.5), and the ranges the code relies on hold (batch sizes and threads
  at least 1, init_std not negative, search.space entries given and low <= high,
  analysis.min_trials_for_fanova enough for the forest, ...). A sweep's storage is
  checked too: a missing directory is created (and said so); a read-only file or
  directory, or a full disk, is refused.
"""

from __future__ import annotations

import difflib
import importlib
import os
import shutil
import sys
from pathlib import Path

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from harness import project_root
from harness.errors import UserError
from harness.models import resolve
from harness.models.cell_class import load_class
from harness.schema import SCHEMAS
from harness.schema import kinds as schema_kinds
from harness.training.lockstep.device import check_lockstep_setting, resolve_device

CONF = project_root() / "conf"
COMMON_DATASET_KEYS = {"name", "format", "path", "task", "bidirectional", "generate", "domain"}
_ABSENT = object()


# -- where the configs are ------------------------------------------------------------------

def config_dirs(options: list[str], overrides: list[str]) -> list[Path] | None:
    """conf/ and the user's config directories (--config-dir, hydra.searchpath=[file://...]);
    None when a pkg:// search path or --config-path leaves the search to Hydra."""
    directories = [CONF]
    for flag, value in zip(options, options[1:] + [""]):
        if flag in ("--config-dir", "-cd"):
            directories.append(Path(value))
        elif flag.startswith(("--config-dir=", "-cd=")):
            directories.append(Path(flag.split("=", 1)[1]))
        elif flag.split("=", 1)[0] in ("--config-path", "-cp"):
            return None
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") == "hydra.searchpath":
            entries = [entry.strip().strip("'\"") for entry in value.strip("[]").split(",") if entry.strip()]
            if not all(entry.startswith("file://") for entry in entries):
                return None
            directories += [Path(entry.removeprefix("file://")) for entry in entries]
    return directories


def _config_name(options: list[str]) -> str:
    for flag, value in zip(options, options[1:] + [""]):
        if flag in ("--config-name", "-cn"):
            return value
        if flag.startswith(("--config-name=", "-cn=")):
            return flag.split("=", 1)[1]
    return "config"


def group_file(directories: list[Path], group: str, choice: str) -> Path | None:
    """The YAML file of a config group's choice (the last directory that has it wins, as in Hydra)."""
    found = [d / group / f"{choice}.yaml" for d in directories if (d / group / f"{choice}.yaml").is_file()]
    return found[-1] if found else None


def _yaml_error(directories: list[Path]) -> str | None:
    """The first config file of these directories that is not valid YAML, with the place."""
    for directory in directories:
        for path in sorted(directory.rglob("*.yaml")):
            try:
                yaml.safe_load(path.read_text())
            except yaml.YAMLError as error:
                mark = getattr(error, "problem_mark", None)
                where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
                problem = getattr(error, "problem", None) or str(error).splitlines()[0]
                return f"{path} is not valid YAML{where}: {problem}; fix the file."
            except OSError:
                continue
    return None


# -- the command line ------------------------------------------------------------------------

def _flat_keys(node, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            path = f"{prefix}{key}"
            keys.append(path)
            keys += _flat_keys(node.get(key), f"{path}.")
    return keys


def _exists(cfg, key: str) -> bool:
    return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False) is not _ABSENT


def _hint(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def reader_keys(fmt) -> dict[str, str] | None:
    """{key: kind} of the options a reader lists (its CONFIG_KEYS), or None if it lists none."""
    try:
        module = importlib.import_module(f"harness.datasets.{fmt}")
    except Exception:  # an unknown format: the reader's own check says so later
        return None
    keys = getattr(module, "CONFIG_KEYS", None)
    if keys is None:
        return None
    return {key: ("number" if kind in ("int", "float") else kind) for key, kind in keys.items()}


def _optional(key: str, baseline) -> bool:
    """Whether `+key` / `~key` concerns a key odyssey reads although a config may leave it out."""
    if key.startswith("search.space.") and key.count(".") == 2:
        return True  # a parameter added to or removed from the search (the sweep checks its name)
    if key == "variant.switches" or key.startswith("variant.switches."):
        return True
    if key.startswith("variant.cell.") and key.count(".") == 2:
        return True  # a keyword argument of a cell given as a class (harness.models.cell_class)
    if key.startswith("train.space.") and key.count(".") == 2:
        return True  # a parameter added to or removed from a recipe's own search
    if key.startswith("dataset.") and key.count(".") == 1:
        options = reader_keys(OmegaConf.select(baseline, "dataset.format", default=None))
        return options is None or key.split(".", 1)[1] in COMMON_DATASET_KEYS | set(options)
    return False


def _compose(directories: list[Path], config_name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    searchpath = [f"file://{d}" for d in directories[1:]]
    extra = [f"hydra.searchpath=[{','.join(searchpath)}]"] if searchpath else []
    with initialize_config_dir(config_dir=str(directories[0]), version_base="1.3"):
        return compose(config_name=config_name, overrides=[*overrides, *extra])


def recipes_with(directories: list[Path], config_name: str, key: str) -> list[str]:
    """The recipes (files of the `train` group, here and in the user's directories) that have `key`."""
    names = sorted({p.stem for d in directories for p in (d / "train").glob("*.yaml")})
    owners = []
    for name in names:
        try:
            if _exists(_compose(directories, config_name, [f"train={name}"]), key):
                owners.append(name)
        except Exception:  # a recipe file that does not compose: its own choice says so
            continue
    return owners


def check_arguments(command: str, options: list[str], overrides: list[str]) -> None:
    """Refuse an override that cannot be read, or that sets, adds or removes a key odyssey does not have."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.append(parser.parse_overrides([text])[0])
        except OverrideParseException as error:
            reason = str(error).splitlines()[0]
            raise UserError(f"cannot read the override \"{text}\" ({reason}); quote a value that holds brackets, "
                            "commas, '=' or leading dashes, e.g. \"key=['--a=b']\".") from None
    directories = config_dirs(options, overrides)
    if directories is None:
        return
    groups = {p.name for d in directories if d.is_dir() for p in d.iterdir() if p.is_dir()}
    chosen, keyed = [], []
    for text, override in zip(overrides, parsed):
        key = override.key_or_group
        if key.split("@")[0].split("/")[0] in groups:
            value = next(iter(override.sweep_string_iterator())) if override.is_sweep_override() else None
            chosen.append(text if value is None else f"{text.split('=', 1)[0]}={value}")
        elif not (key == "hydra" or key.startswith(("hydra.", "hydra/")) or key == "command" or "@" in key):
            keyed.append((text, override))
    try:
        baseline = _compose(directories, _config_name(options), [*chosen, f"command={command}"])
    except yaml.YAMLError:
        raise UserError(_yaml_error(directories) or "a config file is not valid YAML; fix it.") from None
    except Exception as error:  # Hydra's own composition errors: one line of them
        bad_yaml = _yaml_error(directories)
        message = (str(error).strip().splitlines() or [type(error).__name__])[0]
        group = next((text for text in chosen if "No match in the defaults list" in message
                      and f"'{text.split('=', 1)[0]}'" in message), None)
        if group is not None and not bad_yaml:
            raise UserError(f"{group}: the config group '{group.split('=', 1)[0]}' is not part of the defaults; "
                            f"add it with +{group}.") from None
        raise UserError(bad_yaml or message) from None
    known = _flat_keys(baseline)
    listing = f"`odyssey {command} --cfg job` prints every key"
    for text, override in keyed:
        key = override.key_or_group
        exists = _exists(baseline, key)
        if override.is_delete():
            if not exists:
                raise UserError(f"{text}: there is no key '{key}' to remove{_hint(key, known)}; {listing}.")
            if not _optional(key, baseline):
                raise UserError(f"{text}: odyssey reads '{key}', so it cannot be removed; set it to another value "
                                f"instead ({key}=...).")
        elif override.is_add():
            if exists:
                raise UserError(f"{text}: '{key}' exists already (it is {OmegaConf.select(baseline, key)!r}); "
                                f"set it without the '+': {text.lstrip('+')}.")
            if not _optional(key, baseline):
                raise UserError(f"{text}: odyssey reads no key '{key}'{_hint(key, known)}, so the value would be "
                                f"ignored; {listing}.")
        elif not exists:  # key=value or ++key=value
            optional = _optional(key, baseline)
            if optional and override.is_force_add():
                continue
            if optional:
                raise UserError(f"{text}: '{key}' is an option the config leaves out; add it with +{text}.")
            if key.startswith("train.") and (owners := recipes_with(directories, _config_name(options), key)):
                raise UserError(f"{text}: '{key}' is a key of the recipe {' and '.join(owners)}, not of "
                                f"train={baseline.train.get('name')}; choose train={owners[0]}, or leave it out.")
            raise UserError(f"{text}: '{key}' is not a config key{_hint(key, known)}; {listing}.")
        if not override.is_delete() and SCHEMA_KINDS.get(key) == "bool" and not isinstance(override.value(), bool):
            raise UserError(_wrong_kind(key, override.value(), "bool", "on the command line"))
    _check_schema(directories, _config_name(options), [*chosen, *(_first_value(text, o) for text, o in keyed)],
                  command)


def _first_value(text: str, override) -> str:
    """key=a,b (a sweep of a key) as key=a: what one run of it composes."""
    if not override.is_sweep_override():
        return text
    return f"{text.split('=', 1)[0]}={next(iter(override.sweep_string_iterator()))}"


def _check_schema(directories: list[Path], config_name: str, overrides: list[str], command: str) -> None:
    """Compose with every override, so that Hydra checks the values against the schemas
    (harness.schema); a value of the wrong type is one line naming its key."""
    from omegaconf.errors import ValidationError

    try:
        _compose(directories, config_name, [*overrides, f"command={command}"])
    except Exception as error:  # Hydra's ConfigCompositionException, caused by OmegaConf's ValidationError
        cause = error.__cause__ if isinstance(error.__cause__, ValidationError) else error
        key = getattr(cause, "full_key", None)
        if not isinstance(cause, ValidationError) or not key:
            raise UserError((str(error).strip().splitlines() or [type(error).__name__])[0]) from None
        given = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").split("=", 1)[0] == key]
        where = "on the command line" if given else "in the config"
        value = given[-1] if given else getattr(cause, "msg", "")
        raise UserError(_wrong_kind(key, value, SCHEMA_KINDS.get(key, "any"), where)) from None


def _wrong_kind(key: str, value, kind: str, where: str) -> str:
    shown = f"'{value}' (a string)" if isinstance(value, str) and kind == "bool" else f"{value}"
    extra = (", without quotes (a quoted 'false' is a string, and a string counts as true)" if kind == "bool" else "")
    return f"{key} is {shown} {where}; give {SCHEMA_WANTED.get(kind, 'a value of its type (harness/schema.py)')}{extra}."


# -- the composed config -----------------------------------------------------------------

def _kind(value) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"  # whole numbers are checked by the rules below, key by key
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, ListConfig)):
        return "list"
    if isinstance(value, (dict, DictConfig)):
        return "dict"
    return None


def _shipped_kinds(paths: list[Path]) -> dict[str, str]:
    """{dotted key: kind} of the values in these YAML files; a key with two kinds is left out."""
    kinds: dict[str, set] = {}

    def walk(node, prefix):
        for key, value in node.items():
            if str(key) == "defaults" and not prefix:
                continue
            path = f"{prefix}{key}"
            kind = _kind(value)
            if kind is not None:
                kinds.setdefault(path, set()).add(kind)
            if isinstance(value, dict):
                walk(value, f"{path}.")

    for path in paths:
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(loaded, dict):
            walk(loaded, "")
    return {key: next(iter(found)) for key, found in kinds.items() if len(found) == 1}


def _fits(kind: str, value) -> bool:
    if value is None:
        return True  # null: "use the default" wherever the code allows it; the code says otherwise
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    if kind == "list":
        return isinstance(value, (list, ListConfig))
    if kind == "dict":
        return isinstance(value, (dict, DictConfig))
    return True


WANTED = {"bool": "true or false", "number": "a number", "str": "a string",
          "list": "a list, e.g. [a, b]", "dict": "a mapping of keys"}
# The declared types of the search and analysis keys (harness.schema), and what each wants.
SCHEMA_KINDS = schema_kinds()
SCHEMA_WANTED = {**WANTED, "int": "a whole number", "float": "a number"}


def _where(key: str, overrides: list[str], files: dict[str, Path]) -> str:
    if any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides):
        return "on the command line"
    section = key.split(".", 1)[0]
    return f"in {files[section]}" if section in files else "in the config"


def _check_kinds(cfg, section: str | None, kinds: dict[str, str], overrides, files) -> None:
    node = cfg if section is None else cfg.get(section)
    if not isinstance(node, DictConfig):
        return
    prefix = "" if section is None else f"{section}."
    for relative, kind in kinds.items():
        value = OmegaConf.select(node, relative, default=_ABSENT, throw_on_missing=False)
        if value is _ABSENT or _fits(kind, value):
            continue
        key = f"{prefix}{relative}"
        shown = f"'{value}' (a string)" if isinstance(value, str) else repr(value)
        extra = (", without quotes (a quoted 'false' is a string, and a string counts as true)"
                 if kind == "bool" else "")
        raise UserError(f"{key} is {shown} {_where(key, overrides, files)}; give {WANTED[kind]}{extra}.")


def _number(cfg, key: str, test, wanted: str, overrides, files) -> None:
    value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    if value is _ABSENT or value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not test(value):
        raise UserError(f"{key}={value!r} ({_where(key, overrides, files)}): {wanted}.")


TOP_RULES = [("hidden_size", lambda v: isinstance(v, int) and v >= 1, "give a whole number of blocks, at least 1"),
             ("learning_rate", lambda v: v > 0, "give a positive learning rate"),
             ("momentum", lambda v: 0 <= v < 1, "give a momentum in [0, 1)"),
             ("input_noise_std", lambda v: v >= 0, "give a noise deviation of 0 or more"),
             ("max_epochs", lambda v: isinstance(v, int) and v >= 1, "give a whole number of epochs, at least 1"),
             ("patience", lambda v: isinstance(v, int) and v >= 1, "give a whole number of epochs, at least 1"),
             ("seed", lambda v: isinstance(v, int) and v >= 0, "give a whole number, 0 or more")]
TRAIN_RULES = [("train.batch_size", lambda v: isinstance(v, int) and v >= 1, "give at least 1 sequence an update"),
               ("train.plateau_patience", lambda v: isinstance(v, int) and v >= 0, "give a whole number of epochs, 0 or more"),
               ("train.eval_batch_size", lambda v: isinstance(v, int) and v >= 1, "give at least 1 sequence a pass"),
               ("train.init_std", lambda v: v >= 0, "a standard deviation cannot be negative; Greff et al. use 0.1")]
SEARCH_RULES = [("search.n_trials", lambda v: isinstance(v, int) and v >= 1, "give a whole number of trials, at least 1"),
                ("search.workers", lambda v: isinstance(v, int) and v >= 1, "give a whole number of workers, at least 1"),
                ("search.heartbeat_seconds", lambda v: v >= 0, "give a number of seconds, 0 or more"),
                ("search.reconnect_seconds", lambda v: v >= 0, "give a number of seconds, 0 or more"),
                ("search.pruner_startup_trials", lambda v: isinstance(v, int) and v >= 0, "give a whole number, 0 or more"),
                ("search.pruner_warmup_epochs", lambda v: isinstance(v, int) and v >= 0, "give a whole number, 0 or more"),
                ("search.pruner_reduction_factor", lambda v: isinstance(v, int) and v >= 2, "give a whole number, 2 or more"),
                ("search.look_every", lambda v: isinstance(v, int) and v >= 1, "give a whole number of trials a round, at least 1"),
                ("analysis.margin", lambda v: v > 0, "give a positive difference in the metric's units, or null for "
                                                     "the task's default")]
ANALYSIS_RULES = [("analysis.n_trees", lambda v: isinstance(v, int) and v >= 1, "give at least 1 tree"),
                  ("analysis.min_samples_leaf", lambda v: isinstance(v, int) and v >= 1, "give at least 1 trial a leaf"),
                  ("analysis.n_bootstrap", lambda v: isinstance(v, int) and v >= 0, "give 0 (no intervals) or more"),
                  ("analysis.bootstrap_trees", lambda v: isinstance(v, int) and v >= 1, "give at least 1 tree"),
                  ("analysis.ci_level", lambda v: 0 < v < 1, "give a level between 0 and 1, e.g. 0.95"),
                  ("analysis.top_fraction", lambda v: 0 < v <= 1, "give a share in (0, 1], e.g. 0.1"),
                  ("analysis.alpha", lambda v: 0 < v < 1, "give a significance level between 0 and 1, e.g. 0.05"),
                  ("analysis.margin", lambda v: v > 0, "give a positive difference in the metric's units, or null for "
                                                       "the task's default")]


def _check_threads(cfg, overrides, files) -> None:
    threads = OmegaConf.select(cfg, "train.threads", default=None)
    if threads is None or (isinstance(threads, str) and threads.strip().lower() == "auto"):
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"train.threads={threads!r} ({_where('train.threads', overrides, files)}): give a whole "
                        "number of threads, at least 1, or auto.")


def _check_space(cfg, overrides, files) -> None:
    space = cfg.search.get("space")
    if not isinstance(space, DictConfig):
        raise UserError(f"search.space is {space!r}; give a mapping parameter: {{type, low, high, log}} "
                        "(see conf/search/greff.yaml).")
    for name, spec in space.items():
        key = f"search.space.{name}"
        if spec is None:
            raise UserError(f"{key} is null ({_where(key, overrides, files)}); give its range "
                            f"{{type, low, high, log}}, or leave {name} out of the search with ~{key} "
                            f"(then the top-level {name} is used).")
        if not isinstance(spec, DictConfig):
            raise UserError(f"{key}={spec!r}: give a range {{type, low, high, log}}, e.g. "
                            f"'{key}={{type: float, low: 0.0, high: 1.0, log: false}}'.")
    # names, bounds, low <= high, log ranges: _check_recipe_space, with the recipe's keys


def _given(key: str, overrides: list[str]) -> str | None:
    """The override that sets `key` (or a key under it), if any."""
    return next((o for o in overrides if o.lstrip("+~").split("=", 1)[0].split("@")[0] == key
                 or o.lstrip("+~").startswith(f"{key}.")), None)


def _check_variant_and_list(cfg, overrides) -> None:
    """`variant=X` beside a search.variants that a preset set (+experiment=greff sets lstm):
    the list would win and X be swept among the others, so say which to write."""
    chosen = next((o for o in overrides if o.lstrip("+").split("=", 1)[0] == "variant"), None)
    listed = cfg.search.get("variants")
    if chosen is None or listed is None or _given("search.variants", overrides):
        return
    shown = listed if isinstance(listed, str) else f"[{', '.join(map(str, listed))}]"
    raise UserError(f"{chosen} names one model, but search.variants={shown} (set by a preset such as "
                    f"+experiment=greff) chooses this sweep's models; sweep that one model with "
                    f"search.variants=[{cfg.variant.name}] instead of {chosen}.")


def _check_recipe(cfg, overrides) -> None:
    """The recipe's keys (harness.training.recipes), its name against its file, and no key it does not read."""
    from harness.training.recipes import Recipe

    recipe = Recipe.from_config(cfg)
    chosen = next((o.split("=", 1)[1] for o in reversed(overrides) if o.split("=", 1)[0] in ("train", "+train")), None)
    if chosen is not None and chosen != recipe.name:
        raise UserError(f"train={chosen}: its file sets name: {recipe.name}; a recipe's name is part of its studies' "
                        f"names, so set name: {chosen} in train/{chosen}.yaml.")
    if recipe.optimizer != "sgd_nesterov" and (given := _given("momentum", overrides)):
        raise UserError(f"{given}: train={recipe.name} ({recipe.optimizer}) reads no momentum (its moments are "
                        "train.betas); choose train=greff for Nesterov momentum, or leave momentum out.")


def _check_recipe_space(cfg, overrides) -> None:
    """A recipe with a space of its own is searched over that, so search.space would be ignored."""
    from harness.study.sweep import make_pruner, space_of

    if cfg.train.get("space") is not None and (given := _given("search.space", overrides)):
        name = given.lstrip("+~").split("=", 1)[0].replace("search.space", "train.space", 1)
        raise UserError(f"{given}: train={cfg.train.name} searches its own space (train.space), not search.space; "
                        f"set {name} instead.")
    space_of(cfg)  # names, bounds, categorical choices: one message each
    make_pruner(cfg.search)


def _check_fanova(cfg, overrides, files) -> None:
    minimum = OmegaConf.select(cfg, "analysis.min_trials_for_fanova", default=None)
    leaf = OmegaConf.select(cfg, "analysis.min_samples_leaf", default=1)
    if minimum is None:
        return
    # A tree whose leaves hold at least `leaf` trials splits only with 2 x leaf trials; with
    # fewer every tree is one leaf and every fraction of the variance is undefined.
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < max(2, 2 * int(leaf)):
        raise UserError(f"analysis.min_trials_for_fanova={minimum!r} ({_where('analysis.min_trials_for_fanova', overrides, files)}) "
                        f"is too small for the forest: trees with leaves of analysis.min_samples_leaf={leaf} trials "
                        f"need at least {max(2, 2 * int(leaf))} trials to split; raise it (the default is 20).")


def check_storage(url) -> None:
    """A sweep's SQLite or journal file: its directory is made (and said so); a read-only
    place or a full disk is refused before any trial runs."""
    if not isinstance(url, str):
        return
    from harness.storage import JOURNAL_SUFFIXES

    journal = url.startswith("journal:") or (url.endswith(JOURNAL_SUFFIXES) and "://" not in url)
    if not (journal or url.startswith("sqlite:///")):
        return
    text = url.removeprefix("journal:").removeprefix("//") if journal else url[len("sqlite:///"):]
    path = Path(text) if Path(text).is_absolute() else project_root() / text
    if not path.parent.exists():
        try:
            path.parent.mkdir(parents=True)
        except OSError as error:
            raise UserError(f"search.storage: cannot create the directory {path.parent} ({error.strerror}); "
                            "choose a storage path in a directory you can write.") from None
        print(f"sweep: created the storage directory {path.parent}", file=sys.stderr, flush=True)
    probe = path.parent / f".odyssey-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"0" * 4096)  # a read-only file system, a directory without rights, a full disk
        if path.exists():
            with open(path, "r+b"):
                pass
    except OSError as error:
        raise UserError(f"search.storage: {path if path.exists() else path.parent} cannot be written "
                        f"({error.strerror}); use a writable place for search.storage (a copy of a read-only "
                        "study storage works for odyssey analyze, which only reads).") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:  # a read-only file system refuses even that
            pass
    free = shutil.disk_usage(path.parent).free
    if free < 1 << 20:
        raise UserError(f"search.storage: only {free // 1024} KiB are free on the disk of {path.parent}; free some "
                        "space or put search.storage on another disk.")


def check_config(cfg, overrides: list[str], directories: list[Path] | None = None) -> None:
    """Types and ranges of the sections the command uses (see the module docstring)."""
    command = cfg.get("command")
    directories = directories or [CONF]
    files = {}
    for group in ("dataset", "variant"):
        name = OmegaConf.select(cfg, f"{group}.name", default=None)
        if isinstance(name, str) and (found := group_file(directories, group, name)) is not None:
            files[group] = found
    sections = {"train": ["top", "train", "dataset", "variant"], "sweep": ["top", "train", "dataset", "variant", "search"],
                "data": ["dataset"], "analyze": ["analysis"], "bench": ["bench"],
                "dashboard": ["dashboard"]}.get(command, [])
    for section in sections:
        if section == "top":
            top = CONF / "config.yaml"
            kinds = {k: v for k, v in _shipped_kinds([top]).items() if "." not in k and v != "dict"}
            _check_kinds(cfg, None, kinds, overrides, files)
            for key, test, wanted in TOP_RULES:
                _number(cfg, key, test, wanted, overrides, files)
            continue
        if section in SCHEMAS:  # declared types, which Hydra has checked in a config built on the schema
            shipped = _shipped_kinds(sorted((CONF / section).glob("*.yaml")))
            if OmegaConf.get_type(cfg.get(section)) is SCHEMAS[section]:  # what the schema leaves open (space)
                kinds = {key: kind for key, kind in shipped.items() if f"{section}.{key}" not in SCHEMA_KINDS}
            else:  # a user's own config of the group without the schema: its types all the same
                kinds = {key.split(".", 1)[1]: {"int": "number", "float": "number"}.get(kind, kind)
                         for key, kind in SCHEMA_KINDS.items() if key.startswith(f"{section}.") and kind != "any"}
        else:
            kinds = _shipped_kinds(sorted((CONF / section).glob("*.yaml")))
        if section == "dataset":
            options = reader_keys(cfg.dataset.get("format")) or {}
            kinds.update({key: kind for key, kind in options.items() if key not in kinds})
        if section == "train":
            kinds.pop("threads", None)  # auto or a whole number: _check_threads
        if section == "variant":  # a class's keyword arguments are its own (harness.models.cell_class)
            kinds = {key: kind for key, kind in kinds.items() if not key.startswith("cell.")}
        _check_kinds(cfg, section, kinds, overrides, files)
    if "variant" in sections:  # one model (a list is search.variants), known or with switches or a cell of its own
        model = resolve(cfg.variant.name, cfg.variant.get("switches"), cfg.variant.get("cell"))
        if model.cell == "class":  # importable now; built and probed once the data's input size is known
            load_class(cfg.variant.get("cell") or {"_target_": model.target},
                       str(files.get("variant", f"variant/{cfg.variant.name}.yaml")))
    if "train" in sections:
        for key, test, wanted in TRAIN_RULES:
            _number(cfg, key, test, wanted, overrides, files)
        _check_threads(cfg, overrides, files)
        _check_recipe(cfg, overrides)
        resolve_device(cfg.train.get("device", "cpu"))  # unknown, or a GPU this machine lacks
    if "search" in sections:
        for key, test, wanted in SEARCH_RULES:
            _number(cfg, key, test, wanted, overrides, files)
        _check_space(cfg, overrides, files)
        _check_recipe_space(cfg, overrides)
        _check_variant_and_list(cfg, overrides)
        check_lockstep_setting(cfg.search.get("lockstep", 1))
        if cfg.search.get("launcher", "local") == "local":
            check_storage(cfg.search.get("storage"))
    if "analysis" in sections:
        for key, test, wanted in ANALYSIS_RULES:
            _number(cfg, key, test, wanted, overrides, files)
        _check_fanova(cfg, overrides, files)
