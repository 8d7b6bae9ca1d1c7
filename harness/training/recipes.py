"""Training recipes: how the weights are updated, from a file of the `train` config group.

    conf/train/greff.yaml   SGD with Nesterov momentum, step learning_rate * (1 - momentum),
                            one sequence an update (Greff et al. 2017, the default)
    conf/train/adam.yaml    torch.optim.Adam on minibatches, the gradient's norm clipped,
                            an optional plateau or cosine schedule of the learning rate
    conf/train/adamw.yaml   torch.optim.AdamW: adam with decoupled weight decay

The top-level `learning_rate` is every recipe's learning rate; `momentum` is read by
sgd_nesterov only. A recipe file names its update (`optimizer`), and adds only the keys
that update reads (docs/engine.md, "Recipes"); a user's recipe is a file DIR/train/NAME.yaml
passed with --config-dir DIR, usually starting from one of these (`defaults: [adam, _self_]`).

The update runs after the engine has left the gradient of the batch's summed loss in
every parameter's `.grad` (harness.training.engine):

    clip      g <- g * min(1, max_grad_norm / ||g||)   (||g||: the L2 norm over all tensors)
    update    sgd_nesterov: v <- mu v + g,  theta <- theta - lr (1 - mu) (g + mu v)
              adam / adamw: torch.optim.Adam / AdamW with the recipe's betas, eps, weight_decay
    schedule  after each epoch's validation: plateau multiplies the learning rate by
              plateau_factor once more than plateau_patience epochs in a row brought no
              better validation metric; cosine anneals it from learning_rate to
              cosine_min_fraction of it over max_epochs (torch.optim.lr_scheduler)

Entry points: `Recipe.from_config(cfg)` (the root config), `recipe.update(params)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from omegaconf import OmegaConf

from harness import project_root
from harness.errors import UserError

OPTIMIZERS = ("sgd_nesterov", "adam", "adamw")
SCHEDULES = ("none", "plateau", "cosine")
# The recipe keys each update reads beyond those of every recipe (clipping, schedule).
OPTIMIZER_KEYS = {"sgd_nesterov": (), "adam": ("betas", "eps"), "adamw": ("betas", "eps", "weight_decay")}
SCHEDULE_KEYS = {"none": (), "plateau": ("plateau_factor", "plateau_patience"), "cosine": ("cosine_min_fraction",)}


@dataclass(frozen=True)
class Recipe:
    """One recipe's update, as the trainer applies it (keys as in conf/train/*.yaml).

    A feature a recipe file leaves out is off: no clipping, no schedule, no weight decay.
    """

    name: str
    optimizer: str
    learning_rate: float
    momentum: float = 0.0            # sgd_nesterov only
    betas: tuple[float, float] | None = None   # adam, adamw
    eps: float | None = None
    weight_decay: float = 0.0        # adamw
    max_grad_norm: float | None = None
    schedule: str = "none"
    plateau_factor: float | None = None
    plateau_patience: int | None = None
    cosine_min_fraction: float | None = None
    max_epochs: int = 1              # the cosine schedule's length

    @classmethod
    def nesterov(cls, learning_rate: float, momentum: float) -> Recipe:
        """Greff et al.'s update alone (for tests and benchmarks)."""
        return cls(name="greff", optimizer="sgd_nesterov", learning_rate=learning_rate, momentum=momentum)

    @classmethod
    def from_config(cls, cfg) -> Recipe:
        """The recipe of the root config `cfg` (cfg.train, cfg.learning_rate, cfg.momentum,
        cfg.max_epochs); a missing or mistyped key is a UserError naming it."""
        train = cfg.train
        optimizer = train.get("optimizer", "sgd_nesterov")
        if optimizer not in OPTIMIZERS:
            raise UserError(f"train.optimizer={optimizer} is unknown; choose one of {', '.join(OPTIMIZERS)}.")
        schedule = str(train.get("schedule", "none"))
        if schedule not in SCHEDULES:
            raise UserError(f"train.schedule={schedule} is unknown; choose one of {', '.join(SCHEDULES)}.")
        values = {}
        for key in (*OPTIMIZER_KEYS[optimizer], *SCHEDULE_KEYS[schedule]):
            if train.get(key) is None:
                raise UserError(f"train.{key} is not set; train.optimizer={optimizer} with train.schedule={schedule} "
                                f"reads it (see conf/train/adam.yaml).")
            values[key] = train[key]
        if "betas" in values:
            betas = tuple(float(b) for b in values["betas"])
            if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
                raise UserError(f"train.betas={list(betas)}: give two decay rates in [0, 1), e.g. [0.9, 0.999].")
            values["betas"] = betas
        for key, low in (("eps", 0.0), ("weight_decay", 0.0), ("cosine_min_fraction", 0.0)):
            if key in values and not float(values[key]) >= low:
                raise UserError(f"train.{key}={values[key]}: give a number of {low:g} or more.")
        if "plateau_factor" in values and not 0 < float(values["plateau_factor"]) < 1:
            raise UserError(f"train.plateau_factor={values['plateau_factor']}: give a factor in (0, 1), e.g. 0.5.")
        clip = train.get("max_grad_norm")
        if clip is not None and not float(clip) > 0:
            raise UserError(f"train.max_grad_norm={clip}: give a positive norm, or null for no clipping.")
        return cls(name=str(train.get("name", "greff")), optimizer=optimizer,
                   learning_rate=float(cfg.learning_rate),
                   momentum=float(cfg.momentum) if optimizer == "sgd_nesterov" else 0.0,
                   max_grad_norm=None if clip is None else float(clip), schedule=schedule,
                   max_epochs=int(cfg.max_epochs), **values)

    def describe(self) -> str:
        """One line for the training log."""
        parts = [f"{self.name} ({self.optimizer}), lr={self.learning_rate:g}"]
        if self.optimizer == "sgd_nesterov":
            parts.append(f"momentum={self.momentum:g}")
        if self.weight_decay:
            parts.append(f"weight decay {self.weight_decay:g}")
        if self.max_grad_norm is not None:
            parts.append(f"gradient norm clipped to {self.max_grad_norm:g}")
        if self.schedule != "none":
            parts.append(f"{self.schedule} schedule")
        return ", ".join(parts)

    def as_dict(self) -> dict:
        return {key: (list(value) if isinstance(value, tuple) else value) for key, value in asdict(self).items()}

    def update(self, params, compiled=None) -> Update:
        """The update of these parameters; `compiled` (harness.kernels.lstm(), or None) lets
        sgd_nesterov run its update in one compiled loop (the native engine)."""
        return Update(self, list(params), compiled)


class Update:
    """`update()` after the gradients are in every parameter's .grad: clip, then step;
    `end_epoch(val_metric)` after each epoch's validation: the schedule.

    `optimizer` is the torch.optim optimizer (its param_groups hold the learning rate the
    schedule sets). With `compiled`, sgd_nesterov's step is the kernels' nesterov_
    (the same arithmetic as torch.optim.SGD(nesterov=True), over all tensors in one call).
    """

    def __init__(self, recipe: Recipe, params: list[torch.Tensor], compiled=None):
        self.recipe, self.params = recipe, params
        if recipe.optimizer == "sgd_nesterov":
            # the learning rate is the size of a step whatever the momentum (Greff et al.)
            self.optimizer = torch.optim.SGD(params, lr=recipe.learning_rate * (1.0 - recipe.momentum),
                                             momentum=recipe.momentum, nesterov=recipe.momentum > 0)
        elif recipe.optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=recipe.learning_rate, betas=recipe.betas, eps=recipe.eps)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, betas=recipe.betas, eps=recipe.eps,
                                               weight_decay=recipe.weight_decay)
        self.compiled = compiled if recipe.optimizer == "sgd_nesterov" else None
        self.buffers = [torch.zeros_like(p) for p in params] if self.compiled is not None else None
        if recipe.schedule == "plateau":
            self.schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="min", factor=recipe.plateau_factor, patience=recipe.plateau_patience)
        elif recipe.schedule == "cosine":
            self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=recipe.max_epochs,
                eta_min=self.optimizer.param_groups[0]["lr"] * recipe.cosine_min_fraction)
        else:
            self.schedule = None

    @property
    def step_size(self) -> float:
        """The learning rate of the next step (sgd_nesterov: times 1 - momentum)."""
        return float(self.optimizer.param_groups[0]["lr"])

    @torch.no_grad()
    def __call__(self) -> None:
        if self.recipe.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.recipe.max_grad_norm)
        if self.compiled is not None:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            self.compiled.nesterov_(self.params, grads, self.buffers, self.step_size, self.recipe.momentum)
        else:
            self.optimizer.step()

    def end_epoch(self, val_metric: float) -> None:
        if isinstance(self.schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.schedule.step(val_metric)
        elif self.schedule is not None:
            self.schedule.step()


def recipe_file(name: str):
    """conf/train/<name>.yaml composed with its defaults (a recipe that starts from another)."""
    path = project_root() / "conf" / "train" / f"{name}.yaml"
    if not path.is_file():
        return None
    node = OmegaConf.load(path)
    defaults = list(node.pop("defaults", []))
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged = OmegaConf.create()
    for entry in defaults:
        merged = OmegaConf.merge(merged, node if entry == "_self_" else recipe_file(str(entry)))
    return merged


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in (project_root() / "conf" / "train").glob("*.yaml"))
