"""`odyssey <command> [hydra overrides]`: the command line (shared/SPEC.md section 7).

    odyssey train   [overrides]     train one configuration, write metrics.json
    odyssey sweep   [overrides]     random search: one Optuna study per (data set, variant)
    odyssey analyze [overrides]     fANOVA, tables, figures and report of a data set's studies
    odyssey data NAME [overrides]   generate a built-in stand-in, or check and cache a corpus
    odyssey bench   [overrides]     speed of every cell against torch.nn.LSTM / GRU

Everything after the command is Hydra's: `key=value` overrides, `--config-dir DIR` for a
user's own configs (e.g. DIR/dataset/mine.yaml, then dataset=mine), `--cfg job` to print
the composed config. A user error ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from harness import project_root
from harness.errors import UserError

COMMANDS = ("train", "sweep", "analyze", "data", "bench")
USAGE = __doc__.split("\n\n")[1]


def _dispatch(cfg: DictConfig) -> None:
    command = cfg.command
    if command == "train":
        from hydra.core.hydra_config import HydraConfig

        from harness.train import train

        result = train(cfg, out_dir=HydraConfig.get().runtime.output_dir)
        print(f"metrics: {HydraConfig.get().runtime.output_dir}/metrics.json")
        if result["failure"]:
            raise UserError(f"the run failed: {result['failure']}; try a smaller learning_rate.")
    elif command == "sweep":
        from harness.sweep import sweep

        sweep(cfg)
    elif command == "analyze":
        from harness.analysis import run

        report = run(cfg.analysis)
        print(f"report: {report}")
    elif command == "data":
        from harness.datasets.prepare import prepare

        prepare(cfg.dataset)
    elif command == "bench":
        from harness.bench import bench

        bench(cfg)


@hydra.main(config_path=str(project_root() / "conf"), config_name="config", version_base="1.3")
def _hydra_entry(cfg: DictConfig) -> None:
    try:
        _dispatch(cfg)
    except UserError as error:
        print(f"odyssey {cfg.command}: error: {error}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"odyssey: error: unknown command '{command}'; use one of {', '.join(COMMANDS)}.\n\n{USAGE}",
              file=sys.stderr)
        sys.exit(2)
    if command == "data":
        if not rest or rest[0].startswith("-") or "=" in rest[0]:
            print("odyssey data: error: name the data set, e.g. `odyssey data timit_like`.", file=sys.stderr)
            sys.exit(2)
        rest = [f"dataset={rest[0]}"] + rest[1:]
    sys.argv = [f"odyssey {command}", *rest, f"command={command}"]
    _hydra_entry()


if __name__ == "__main__":
    main()
