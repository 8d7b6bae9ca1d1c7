"""The types of the `search` and `analysis` config groups, as Hydra structured configs.

Each dataclass is the schema of one group: its fields and their types, and no values.
The values, defaults included, are written once, in the YAML files (conf/search/greff.yaml,
conf/analysis/default.yaml), which name the schema first in their defaults list::

    defaults:
      - schema
      - _self_

Hydra then refuses, while it composes the config, a key the schema does not have and a
value that is not of its type (search.n_trials=2.5, analysis.n_trees=many); harness.validate
turns that refusal into one line naming the key. A boolean key takes only true or false
on the command line (validate checks it against `kinds`, since OmegaConf would read
`no` or `1` as a boolean). Ranges (at least 1 worker, a level in (0, 1), ...) are checked
by validate's rules. A new key of either group goes into its YAML file and here.

`register()` puts the schemas into Hydra's ConfigStore (as `search/schema` and
`analysis/schema`); `import harness` calls it, so every composition finds them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Dict, List, Optional, get_args, get_origin, get_type_hints

from omegaconf import MISSING


@dataclass
class SlurmSchema:
    """search.slurm: the SLURM array job of search.launcher=slurm (harness.study.launchers.slurm)."""

    partition: Optional[str] = MISSING
    time_min: int = MISSING
    cpus_per_task: int = MISSING
    mem_gb: Optional[float] = MISSING
    sbatch: List[str] = MISSING
    setup: List[str] = MISSING
    folder: str = MISSING
    wait: bool = MISSING
    poll_seconds: float = MISSING


@dataclass
class SearchSchema:
    """search: the random search (harness.study.sweep)."""

    n_trials: int = MISSING
    variants: Any = MISSING  # null, a name of harness.models.LISTS, or a list of models
    storage: str = MISSING
    workers: int = MISSING
    lockstep: Any = MISSING  # a positive integer, or auto (harness.training.lockstep.choose_lockstep)
    heartbeat_seconds: float = MISSING
    reconnect_seconds: float = MISSING
    pruner: str = MISSING
    pruner_startup_trials: int = MISSING
    pruner_warmup_epochs: int = MISSING
    pruner_reduction_factor: int = MISSING
    launcher: str = MISSING
    protocol_change: str = MISSING  # refuse | allow (harness.storage.protocol)
    slurm: SlurmSchema = MISSING
    until: str = MISSING
    look_every: int = MISSING
    space: Dict[str, Any] = MISSING  # parameter: {type, low, high, log} (harness.study.sweep checks each)


@dataclass
class AnalysisSchema:
    """analysis: the analysis of a data set's studies (harness.analysis)."""

    dataset: Optional[str] = MISSING
    recipe: Any = MISSING  # null, a recipe's name, or a list of them
    storage: str = MISSING
    out: Optional[str] = MISSING
    metric: str = MISSING
    task: Optional[str] = MISSING
    n_trees: int = MISSING
    seed: int = MISSING
    n_bootstrap: int = MISSING
    bootstrap_trees: int = MISSING
    ci_level: float = MISSING
    diverged_rule: str = MISSING
    diverged_k: float = MISSING
    diverged_ratio: float = MISSING
    diverged_anchor: str = MISSING
    top_fraction: float = MISSING
    min_trials_for_fanova: int = MISSING
    ped_anova_target_quantile: float = MISSING
    ped_anova_region_quantile: float = MISSING
    alpha: float = MISSING
    multiplicity: str = MISSING
    reference_variant: str = MISSING
    margin: Optional[float] = MISSING
    negligible_fraction: float = MISSING
    small_interactions: float = MISSING
    lr_shift_tolerance: float = MISSING
    curves_per_variant: int = MISSING
    grid_points: int = MISSING
    min_samples_leaf: int = MISSING
    crosscheck: bool = MISSING
    figures: bool = MISSING


SCHEMAS = {"search": SearchSchema, "analysis": AnalysisSchema}


def register() -> None:
    """The schemas in Hydra's ConfigStore, as the defaults entry `schema` of their groups."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, schema in SCHEMAS.items():
        store.store(group=group, name="schema", node=schema)


def kinds(schema=None, prefix: str = "") -> dict[str, str]:
    """{dotted key: "bool" | "int" | "float" | "str" | "list" | "dict" | "any"} of a schema
    (all of SCHEMAS when none is given), for the checks and the messages of validate."""
    if schema is None:
        found = {}
        for group, each in SCHEMAS.items():
            found.update(kinds(each, f"{group}."))
        return found
    names = {bool: "bool", int: "int", float: "float", str: "str"}
    found = {}
    hints = get_type_hints(schema)
    for field in fields(schema):
        kind = hints[field.name]
        if get_origin(kind) is not None and type(None) in get_args(kind):  # Optional[X]
            kind = next(arg for arg in get_args(kind) if arg is not type(None))
        key = f"{prefix}{field.name}"
        if is_dataclass(kind):
            found[key] = "dict"
            found.update(kinds(kind, f"{key}."))
        elif get_origin(kind) in (list, List):
            found[key] = "list"
        elif get_origin(kind) in (dict, Dict):
            found[key] = "dict"
        else:
            found[key] = names.get(kind, "any")
    return found
