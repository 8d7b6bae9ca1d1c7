"""`odyssey data NAME`: make a built-in stand-in, or check (and cache) a corpus you have.

A dataset config with a `generate` block (a Hydra `_target_` and its arguments) is a
built-in stand-in: its generator writes the files (doing nothing if they are complete).
Then the data set is read exactly as training will read it, which checks every file
(and caches features, for the readers that cache), and a summary is printed.
"""

from __future__ import annotations

import json

from hydra.utils import instantiate
from omegaconf import OmegaConf

from harness.datasets import load_dataset, resolve_path


def prepare(dataset_cfg) -> dict:
    generate = dataset_cfg.get("generate")
    if generate is not None:
        print(f"generating {dataset_cfg.name} ...", flush=True)
        arguments = OmegaConf.to_container(generate, resolve=True)
        if "out" in arguments:  # relative paths are from the project root, as for `path`
            arguments["out"] = str(resolve_path(arguments["out"]))
        instantiate(arguments, _convert_="all")
    data = load_dataset(dataset_cfg)
    summary = data.summary()
    print(json.dumps({k: v for k, v in summary.items() if k not in ("mean", "std")}, indent=2, default=str))
    print(f"{dataset_cfg.name}: ready ({summary['train']['sequences']} training sequences, "
          f"{summary['input_dim']} inputs, {summary['n_outputs']} outputs)")
    return summary
