"""odyssey: a harness that redoes Greff et al., "LSTM: A Search Space Odyssey" (2017).

The path of the data is the path of the code:

    harness.datasets  (readers)  ->  harness.models.networks (cells.py inside)  ->  harness.training.train
    ->  harness.study.sweep (one Optuna trial per configuration)  ->  harness.analysis  ->  figures

See README.md for the commands, docs/architecture.md for the modules and where to add a
model, a data format, a launcher or a figure, and docs/ for the science (cells.md,
tasks.md, training.md, analysis.md, engine.md, own_dataset.md).
"""

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
