"""`odyssey <command> [hydra overrides]`: the command line (README.md, Commands).

    odyssey train   [overrides]     train one configuration, write metrics.json
    odyssey sweep   [overrides]     random search: one Optuna study per (data set, variant)
    odyssey analyze [overrides]     fANOVA, tables, figures and report of a data set's studies
    odyssey data NAME [overrides]   generate a built-in stand-in, or check and cache a corpus
    odyssey bench   [overrides]     speed of every cell against torch.nn.LSTM / GRU
    odyssey dashboard [overrides]   optuna-dashboard on search.storage, live (dashboard.port)

Everything after the command is Hydra's: `key=value` overrides, `--config-dir DIR` for a
user's own configs (e.g. DIR/dataset/mine.yaml, then dataset=mine), `--cfg job` to print
the composed config. A user error ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import errno
import sys

import hydra
from omegaconf import DictConfig

from harness import project_root
from harness.errors import UserError
from harness.models import LISTS, list_error
from harness.storage import EXIT_STORAGE_LOST, StorageLost

COMMANDS = ("train", "sweep", "analyze", "data", "bench", "dashboard")
USAGE = __doc__.split("\n\n")[1]


def _dispatch(cfg: DictConfig) -> None:
    command = cfg.command
    if command == "train":
        from hydra.core.hydra_config import HydraConfig

        from harness.datasets import load_dataset
        from harness.training.lockstep import resolve_device, train_on_device
        from harness.training.train import train

        out_dir = HydraConfig.get().runtime.output_dir
        device = resolve_device(cfg.train.get("device", "cpu"))
        if device.type == "cpu":
            result = train(cfg, out_dir=out_dir)
        else:  # the batched torch path of harness.training.lockstep, one slot
            result = train_on_device(cfg, load_dataset(cfg.dataset), device, out_dir=out_dir)
        print(f"metrics: {out_dir}/metrics.json")
        if result.failure:
            raise UserError(f"the run failed: {result.failure}; try a smaller learning_rate.")
    elif command == "sweep":
        from harness.study.launchers import launch
        from harness.study.sweep import sweep

        sweep(cfg, launch)
    elif command == "analyze":
        from harness.analysis import run
        from harness.analysis.compare import compare, is_comparison

        report = compare(cfg.analysis) if is_comparison(cfg.analysis) else run(cfg.analysis)
        print(f"report: {report}")
    elif command == "data":
        from harness.datasets.prepare import prepare

        prepare(cfg.dataset)
    elif command == "bench":
        from harness.bench import bench

        bench(cfg)
    elif command == "dashboard":
        from harness.study.dashboard import serve

        serve(cfg)


# The command line as main() split it, for the checks of the composed config.
_ARGUMENTS: dict = {"overrides": [], "directories": None}
# A storage or output that cannot be written: one line, not the library's traceback.
WRITE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT)
SQLITE_WRITE_ERRORS = ("readonly database", "disk is full", "unable to open database file", "disk I/O error")


@hydra.main(config_path=str(project_root() / "conf"), config_name="config", version_base="1.3")
def _hydra_entry(cfg: DictConfig) -> None:
    try:
        from harness.validate import check_config

        check_config(cfg, _ARGUMENTS["overrides"], _ARGUMENTS["directories"])
        _dispatch(cfg)
    except UserError as error:
        print(f"odyssey {cfg.command}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except StorageLost as error:  # a sweep's storage stopped answering (harness.storage.reconnecting)
        print(f"odyssey {cfg.command}: error: {error}", file=sys.stderr)
        sys.exit(EXIT_STORAGE_LOST)
    except OSError as error:
        if error.errno not in WRITE_ERRNOS:
            raise
        kept = " (finished trials are kept: run the same command to resume)" if cfg.command == "sweep" else ""
        what = f" {error.filename}" if error.filename else ""
        print(f"odyssey {cfg.command}: error: cannot write{what} ({error.strerror}); free some space or choose a "
              f"writable place (hydra.run.dir, search.storage){kept}.", file=sys.stderr)
        sys.exit(2)
    except Exception as error:  # SQLAlchemy's OperationalError of a read-only or full SQLite file
        text = str(error)
        if type(error).__name__ != "OperationalError" or not any(words in text for words in SQLITE_WRITE_ERRORS):
            raise
        reason = next(words for words in SQLITE_WRITE_ERRORS if words in text)
        print(f"odyssey {cfg.command}: error: the storage cannot be written ({reason}); free some space, or make "
              "the storage file and its directory writable, or choose another search.storage (finished trials "
              "are kept: run the same command to resume).", file=sys.stderr)
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
        elif "=" in argument or argument.startswith("~"):  # ~key: Hydra's removal of a key
            overrides.append(argument)
        else:
            words.append(argument)
    return options, overrides, words


def check_choices(options: list[str], overrides: list[str]) -> None:
    """One line for an unknown dataset or variant, listing the configs there are (here and
    in a --config-dir), before Hydra's longer message; and for a list of models given as
    `variant=` (lstm, all: harness.models.LISTS), which is `search.variants`."""
    from harness.validate import config_dirs

    directories = config_dirs(options, overrides)  # conf/, --config-dir, hydra.searchpath=[file://DIR]
    if directories is None:
        return  # a pkg:// search path or --config-path: leave the check to Hydra
    for override in overrides:
        group, _, value = override.partition("=")
        if group not in ("dataset", "variant", "train") or not value:
            continue
        if group == "variant" and (lists := [v for v in value.split(",") if v in LISTS]):
            print(f"odyssey: error: {list_error(lists[0])}", file=sys.stderr)
            sys.exit(2)
        known = sorted({p.stem for d in directories for p in (d / group).glob("*.yaml")})
        unknown = [v for v in value.split(",") if v not in known]
        if unknown:
            what = "recipe (train)" if group == "train" else group
            print(f"odyssey: error: unknown {what} '{unknown[0]}'; choose one of {', '.join(known)}"
                  + (" (or add DIR/dataset/NAME.yaml and pass --config-dir DIR)." if group == "dataset" else "."),
                  file=sys.stderr)
            sys.exit(2)


STORAGE_KEYS = ("search.storage", "analysis.storage")


def without_password(override: str) -> str:
    """`search.storage=postgresql://user:PASSWORD@host/db` as the same override without the
    password, which goes to PGPASSWORD (harness.storage.move_password): so neither Hydra's
    record of the run (.hydra/) nor any later message, file or task ever holds it."""
    key, sep, value = override.partition("=")
    if not sep or key.lstrip("+") not in STORAGE_KEYS or "@" not in value:
        return override
    from harness.storage import move_password

    quote = value[0] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else ""
    inner = value[1:-1] if quote else value
    return f"{key}={quote}{move_password(inner)}{quote}"


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
    overrides = [without_password(override) for override in overrides]
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
    from harness.validate import check_arguments, config_dirs

    try:
        check_arguments(command, options, overrides)
    except UserError as error:
        print(f"odyssey {command}: error: {error}", file=sys.stderr)
        sys.exit(2)
    _ARGUMENTS.update(overrides=list(overrides), directories=config_dirs(options, overrides))
    listed = any(o.startswith("variant=") and "," in o for o in overrides)
    if command == "sweep" and listed and not {"-m", "--multirun"} & set(options):
        options.append("--multirun")  # variant=a,b: one sweep per variant
    sys.argv = [f"odyssey {command}", *options, *overrides, f"command={command}"]
    _hydra_entry()


if __name__ == "__main__":
    main()
