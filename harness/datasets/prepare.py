"""`odyssey data NAME`: make a built-in stand-in, or check (and cache) a corpus you have.

A dataset config with a `generate` block (a Hydra `_target_` and its arguments) is a
built-in stand-in: its generator writes the files (doing nothing if they are complete).
Then the data set is read exactly as training will read it, which checks every file
(and caches features, for the readers that cache), and a summary is printed.
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from harness import project_root
from harness.datasets import load_dataset, resolve_path
from harness.errors import UserError


# What a generator leaves in a directory it made (timit_like: generate.json; handwriting_like: .complete).
GENERATOR_RECORDS = ("generate.json", ".complete")


def check_out(name: str, out: Path) -> None:
    """A stand-in is written only into a new or empty directory, one a generator made before,
    or the project's own datasets/ folder: never among a user's files without asking."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"dataset.path={out} is a file; `odyssey data {name}` writes a directory there: choose "
                        "a new directory for dataset.path.")
    entries = sorted(p.name for p in out.iterdir())
    ours = any((out / record).is_file() for record in GENERATOR_RECORDS)
    inside_project = out.resolve().is_relative_to((project_root() / "datasets").resolve())
    if entries and not ours and not inside_project:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise UserError(f"dataset.path={out} already holds files that odyssey did not make ({shown}); `odyssey data "
                        f"{name}` writes its stand-in only into a new or empty directory (or one it made): choose "
                        "another dataset.path.")


def prepare(dataset_cfg) -> dict:
    generate = dataset_cfg.get("generate")
    if generate is not None:
        arguments = OmegaConf.to_container(generate, resolve=True)
        if "out" in arguments:  # relative paths are from the project root, as for `path`
            arguments["out"] = str(resolve_path(arguments["out"]))
            check_out(dataset_cfg.name, Path(arguments["out"]))
        print(f"generating {dataset_cfg.name} ...", flush=True)
        instantiate(arguments, _convert_="all")
    data = load_dataset(dataset_cfg)
    summary = data.summary()
    print(json.dumps({k: v for k, v in summary.items() if k not in ("mean", "std")}, indent=2, default=str))
    print(f"{dataset_cfg.name}: ready ({summary['train']['sequences']} training sequences, "
          f"{summary['input_dim']} inputs, {summary['n_outputs']} outputs)")
    return summary
