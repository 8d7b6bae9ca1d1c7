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
from pathlib import Path

import hydra
from omegaconf import DictConfig

from harness import project_root
from harness.errors import UserError

COMMANDS = ("train", "sweep", "analyze", "data", "bench")
USAGE = __doc__.split("\n\n")[1]


def _dispatch(cfg: DictConfig) -> None:
    command = cfg.command
    if command == "train":
        from hydra.core.hydra_config import HydraConfig

        from harness.train import train

        out_dir = HydraConfig.get().runtime.output_dir
        result = train(cfg, out_dir=out_dir)
        print(f"metrics: {out_dir}/metrics.json")
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
    except KeyboardInterrupt:
        again = " (finished trials are kept: run the same command to resume)" if cfg.command == "sweep" else ""
        print(f"odyssey {cfg.command}: stopped{again}.", file=sys.stderr)
        sys.exit(130)


# Hydra's own options, and whether each takes a value; they must come before the overrides.
HYDRA_OPTIONS = {"--config-dir": True, "-cd": True, "--config-path": True, "-cp": True,
                 "--config-name": True, "-cn": True, "--cfg": True, "-c": True, "--package": True,
                 "-p": True, "--info": False, "-i": False, "--multirun": False, "-m": False,
                 "--resolve": False, "--run": False, "-r": False, "--help": False, "-h": False,
                 "--hydra-help": False}


def split_arguments(arguments: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(Hydra options with their values, key=value overrides, other words) in their order."""
    options, overrides, words = [], [], []
    rest = iter(arguments)
    for argument in rest:
        flag = argument.split("=", 1)[0]
        if flag in HYDRA_OPTIONS:
            options.append(argument)
            if HYDRA_OPTIONS[flag] and "=" not in argument:
                options.append(next(rest, ""))
        elif "=" in argument:
            overrides.append(argument)
        else:
            words.append(argument)
    return options, overrides, words


def check_choices(options: list[str], overrides: list[str]) -> None:
    """One line for an unknown dataset or variant, listing the configs there are (here and
    in a --config-dir), before Hydra's longer message."""
    directories = [project_root() / "conf"]
    for flag, value in zip(options, options[1:] + [""]):
        if flag in ("--config-dir", "-cd"):
            directories.append(Path(value))
        elif flag.startswith(("--config-dir=", "-cd=")):
            directories.append(Path(flag.split("=", 1)[1]))
    for override in overrides:  # hydra.searchpath=[file://DIR,...] adds directories too
        key, _, value = override.partition("=")
        if key.lstrip("+") == "hydra.searchpath":
            entries = [entry.strip() for entry in value.strip("[]").split(",") if entry.strip()]
            if not all(entry.startswith("file://") for entry in entries):
                return  # a pkg:// search path: leave the check to Hydra
            directories += [Path(entry.removeprefix("file://")) for entry in entries]
    for override in overrides:
        group, _, value = override.partition("=")
        if group not in ("dataset", "variant") or not value:
            continue
        known = sorted({p.stem for d in directories for p in (d / group).glob("*.yaml")})
        unknown = [v for v in value.split(",") if v not in known]
        if unknown:
            print(f"odyssey: error: unknown {group} '{unknown[0]}'; choose one of {', '.join(known)}"
                  + (" (or add DIR/dataset/NAME.yaml and pass --config-dir DIR)." if group == "dataset" else "."),
                  file=sys.stderr)
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
    options, overrides, words = split_arguments(rest)
    if command == "data":
        if len(words) != 1:
            print("odyssey data: error: name one data set, e.g. `odyssey data timit_like`.", file=sys.stderr)
            sys.exit(2)
        overrides.insert(0, f"dataset={words[0]}")
    elif words:
        print(f"odyssey {command}: error: '{words[0]}' is neither key=value nor an option; "
              f"see `odyssey --help`.", file=sys.stderr)
        sys.exit(2)
    check_choices(options, overrides)
    listed = any(o.startswith("variant=") and "," in o for o in overrides)
    if command == "sweep" and listed and not {"-m", "--multirun"} & set(options):
        options.append("--multirun")  # variant=a,b: one sweep per variant
    sys.argv = [f"odyssey {command}", *options, *overrides, f"command={command}"]
    _hydra_entry()


if __name__ == "__main__":
    main()
