"""A cell given as a class: `cell: {_target_: package.module.Class, ...}` in a variant config.

A variant config `DIR/variant/NAME.yaml` (run with `--config-dir DIR variant=NAME`)

    name: NAME
    cell:
      _target_: package.module.Class     # found on the Python path (PYTHONPATH)
      width: 3                           # any further keys: keyword arguments

makes the model NAME of the cell `Class(input_size=M, hidden_size=N, width=3)` (Hydra's
`_target_` convention): a torch.nn.Module whose forward(x) maps x (T, B, M), float32, to
(T, B, N) from a zero state. odyssey does everything else as for its own cells: the
read-out, the backward direction of a bidirectional task (each sequence reversed within
its length), padding at the end and masks for minibatches, initialisation, input noise,
the recipes, early stopping, sweeps and studies `<dataset>.NAME`, analysis and scorecard
(NAME against vanilla). Padding comes after a sequence's last frame, so a cell whose
output at frame t reads frames up to t only (any recurrent cell) never sees it.

`CellClass` wraps the module built from the config. It initialises every parameter of
the module ~ N(0, init_std^2), as odyssey initialises its own cells (`train.init_std`,
Greff et al.'s 0.1), whatever the class did, so that a comparison with Greff's variants
is not one of initialisations; `train.forget_bias` is the LSTM family's and does not
apply. It trains on the torch path (harness.training.engine says so once; lockstep refuses it).
Its weights (`export_weights`) are the module's own weight contract if it has one
(odyssey's minGRU and minLSTM, harness.models.minimal), else its named parameters.

Checks before anything trains, each a UserError naming the YAML file and what to fix: a
`_target_` that is missing or cannot be imported, a constructor that rejects
`input_size`/`hidden_size` (or the keyword arguments), a module without trainable
parameters, and a forward that does not return one tensor (T, B, N) of the input's
dtype (float32 in training) for a small probe input (and for every batch after it).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from harness.errors import UserError
from harness.models import Model, variant_file
from harness.models.weights import WeightContract, import_into

# The probe a new cell is checked with: T frames of B sequences.
PROBE_FRAMES, PROBE_BATCH = 3, 2


def target_of(cell, where: str) -> str:
    """The `_target_` of a `cell:` mapping (a dotted path), or a UserError naming `where`."""
    if not hasattr(cell, "items"):
        raise UserError(f"{where}: cell must be a mapping with _target_, e.g. cell: "
                        f"{{_target_: mypackage.cells.MyCell}}; got {cell!r}.")
    target = cell.get("_target_")
    if not isinstance(target, str) or not target.strip() or target.startswith(".") or "." not in target:
        raise UserError(f"{where}: cell._target_ must be the dotted path of a class, e.g. mypackage.cells.MyCell; "
                        f"got {target!r}.")
    return target


def load_class(cell, where: str) -> type:
    """The class a `cell:` mapping names, imported from the Python path."""
    target = target_of(cell, where)
    parts = target.split(".")
    error = None
    for split in range(len(parts) - 1, 0, -1):  # the longest importable module, then attributes
        module_name = ".".join(parts[:split])
        try:
            found = importlib.import_module(module_name)
        except ModuleNotFoundError as missing:
            if missing.name is not None and not module_name.startswith(missing.name):
                error = f"importing {module_name} failed: {missing}"  # the module exists but needs another
                break
            continue
        except Exception as failure:  # the module's own code raised
            error = f"importing {module_name} raised {type(failure).__name__}: {failure}"
            break
        try:
            for attribute in parts[split:]:
                found = getattr(found, attribute)
        except AttributeError:
            error = f"{module_name} has no {'.'.join(parts[split:])}"
            break
        if not (isinstance(found, type) and issubclass(found, nn.Module)):
            error = f"{target} is not a torch.nn.Module class"
            break
        return found
    else:
        error = f"no module {parts[0]} on the Python path"
    raise UserError(f"{where}: cell._target_ {target} cannot be used ({error}); put its package on PYTHONPATH "
                    "(e.g. PYTHONPATH=DIR odyssey ...) and check the path.")


def arguments_of(cell) -> dict:
    """The keyword arguments of a `cell:` mapping: every key but `_target_`, as plain Python."""
    def plain(value):
        if hasattr(value, "items"):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
            return [plain(v) for v in value]
        return value
    return {str(key): plain(value) for key, value in cell.items() if key != "_target_"}


class CellClass(WeightContract, nn.Module):
    """A cell of one's own (see the module docstring): x (T, B, M) -> (T, B, N).

    `model` is its row (harness.models.resolve), `cell` the `cell:` mapping of its variant
    config (None: the model's own target without arguments, for odyssey's built-in ones).
    """

    def __init__(self, model: Model, cell, input_size: int, hidden_size: int, init_std: float = 0.1):
        super().__init__()
        self.variant = model.name
        self.input_size, self.hidden_size = input_size, hidden_size
        where = variant_file(model.name)
        cell = {"_target_": model.target} if cell is None else cell
        cls = load_class(cell, where)
        arguments = arguments_of(cell)
        try:
            self.cell = cls(input_size=input_size, hidden_size=hidden_size, **arguments)
        except Exception as error:  # TypeError for an unknown keyword; a class's own ValueError
            given = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
            raise UserError(f"{where}: {cls.__name__}(input_size={input_size}, hidden_size={hidden_size}"
                            f"{', ' + given if given else ''}) failed ({type(error).__name__}: {error}); the class "
                            "must take input_size and hidden_size as keywords, and the keys of cell: as its "
                            "other arguments.") from None
        if not isinstance(self.cell, nn.Module):
            raise UserError(f"{where}: {cls.__name__}(...) did not return a torch.nn.Module; make the class one.")
        parameters = [p for p in self.cell.parameters() if p.requires_grad]
        if not parameters:
            raise UserError(f"{where}: {cls.__name__} has no trainable parameters (nn.Parameter), so there is nothing "
                            "to train; give it some.")
        with torch.no_grad():
            for parameter in parameters:
                parameter.normal_(0.0, init_std)
        self._where = where
        self._probe()

    def _probe(self) -> None:
        """One forward of a small fixed input (no random numbers drawn), checked like every forward."""
        x = torch.linspace(-1.0, 1.0, PROBE_FRAMES * PROBE_BATCH * self.input_size)
        was_training = self.cell.training
        self.cell.eval()
        try:
            with torch.no_grad():
                y = self.cell(x.view(PROBE_FRAMES, PROBE_BATCH, self.input_size))
        except Exception as error:
            raise UserError(f"{self._where}: {type(self.cell).__name__}'s forward failed on a (T={PROBE_FRAMES}, "
                            f"B={PROBE_BATCH}, M={self.input_size}) input ({type(error).__name__}: {error}); it must "
                            "take x of shape (T, B, input_size).") from None
        finally:
            self.cell.train(was_training)
        self._check(y, (PROBE_FRAMES, PROBE_BATCH), x.dtype)

    def _check(self, y, frames_and_batch: tuple[int, int], dtype: torch.dtype) -> None:
        expected = (*frames_and_batch, self.hidden_size)
        name = type(self.cell).__name__
        if not isinstance(y, torch.Tensor):
            raise UserError(f"{self._where}: {name}'s forward returned a {type(y).__name__}; return one tensor "
                            f"(T, B, hidden_size), the outputs of every frame (not a tuple with the state).")
        if tuple(y.shape) != expected:
            raise UserError(f"{self._where}: {name}'s forward returned shape {tuple(y.shape)} for an input "
                            f"{(*frames_and_batch, self.input_size)}; return (T, B, hidden_size) = {expected}.")
        if y.dtype != dtype:
            raise UserError(f"{self._where}: {name}'s forward returned {y.dtype} for a {dtype} input; return the "
                            "input's dtype.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cell(x)
        if not isinstance(y, torch.Tensor) or y.shape != (*x.shape[:2], self.hidden_size) or y.dtype != x.dtype:
            self._check(y, tuple(x.shape[:2]), x.dtype)
        return y

    def weight_views(self) -> dict[str, torch.Tensor]:
        if isinstance(self.cell, WeightContract):
            return self.cell.weight_views()
        return {name: parameter for name, parameter in self.cell.named_parameters()}

    def import_weights(self, weights: dict[str, torch.Tensor]) -> None:
        import_into(self.weight_views(), weights, type(self.cell).__name__)
