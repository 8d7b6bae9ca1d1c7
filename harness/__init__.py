"""odyssey: a harness that redoes Greff et al., "LSTM: A Search Space Odyssey" (2017).

Its packages are the stages of a study, each importing only those before it:

    harness.datasets  (readers)  ->  harness.models  (cells, networks)  ->  harness.training
    ->  harness.analysis  (verdicts, fANOVA, report, figures)  ->  harness.study  (sweeps, rounds)

with harness.kernels (the compiled loops) below the models, harness.storage (opening a
study's storage, counting its trials, its protocol) between training and the analysis, and
the command line (harness.cli), its config checks and harness.bench on top.

See README.md for the commands, docs/architecture.md for the modules and where to add a
model, a data format, a launcher or a figure, and docs/ for the science (cells.md,
tasks.md, training.md, analysis.md, engine.md, own_dataset.md).
"""

import importlib
import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"


def project_root() -> Path:
    """The directory holding conf/ and datasets/: relative data paths in configs start here."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "conf").is_dir() else Path.cwd()


def _register_config_schemas() -> None:
    """The types of the search and analysis configs (harness.schema), known to Hydra before
    any config is composed: the command line's, the tests', a script's."""
    from harness.schema import register

    register()


_register_config_schemas()

# Modules that moved when harness/ was grouped by the stages of a study: {old path: new path},
# both below harness. A user's code or config that names an old path (a cell's `_target_` in
# the old module of the minimal RNNs, make_layer imported from the old module of the cells)
# still imports the module, from its new place.
MOVED = {
    "cells": "models.cells", "cell_class": "models.cell_class", "gated_feedback": "models.gated_feedback",
    "minimal": "models.minimal", "griffin": "models.griffin", "networks": "models.networks",
    "weights": "models.weights", "train": "training.train", "recipes": "training.recipes",
    "tasks": "training.tasks", "ctc": "training.ctc", "resources": "training.resources", "engine": "training.engine",
    "lockstep": "training.lockstep", "sweep": "study.sweep", "rounds": "study.rounds",
    "launchers": "study.launchers", "protocol": "storage.protocol", "report": "analysis.report",
    "figures": "analysis.figures",
}


def moved_to(name: str) -> str | None:
    """The path module `name` has now, if it is one of MOVED or inside one; else None."""
    for old, new in MOVED.items():
        if name == f"harness.{old}" or name.startswith(f"harness.{old}."):
            return f"harness.{new}" + name[len(f"harness.{old}"):]
    return None


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a module by its old path as a module that hands out the names of the new one."""

    def find_spec(self, name, path=None, target=None):
        new = moved_to(name)
        if new is None:
            return None
        package = importlib.util.find_spec(new).submodule_search_locations is not None
        return importlib.util.spec_from_loader(name, self, is_package=package)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        new = importlib.import_module(moved_to(module.__name__))
        module.__doc__ = f"Moved to {new.__name__}."
        module.__getattr__ = lambda attribute: getattr(new, attribute)  # PEP 562


sys.meta_path.append(_OldPaths())
