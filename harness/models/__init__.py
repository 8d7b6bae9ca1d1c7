"""The registry of models: every name `variant=` takes, what each is, and the lists a sweep takes.

    name      cell  what it is                                            config
    vanilla   lstm  Greff et al.'s LSTM with peepholes (switches: none)   conf/variant/vanilla.yaml
    nig ...   lstm  Greff's eight variants, each a preset of `SWITCHES`   conf/variant/NAME.yaml
    gru       gru   the GRU of Cho et al. (2014)
    gflstm    lstm  gated-feedback LSTM stack (Chung et al. 2015)         `layers`, `concat_layers`
    gfgru     gru   gated-feedback GRU stack                              `layers`, `concat_layers`
    mingru    class the minimal GRU of Feng et al. (2024)                 `cell: {_target_: harness.models.minimal.MinGRU}`
    minlstm   class the minimal LSTM of Feng et al. (2024)                `cell: {_target_: harness.models.minimal.MinLSTM}`
    rglru     class Griffin's RG-LRU (De et al. 2024)                     `cell: {_target_: harness.models.griffin.RGLRU}`

`MODELS` is that table; the cells (harness.models.cells, harness.models.gated_feedback) compute what a
row says, and the command line, the sweep, the bench and the docs read the names here.
`gfrnn` is the former name of `gflstm` and stays accepted (`ALIASES`): it resolves to
gflstm everywhere (the composed config and its runs are gflstm, and a new sweep writes
the study <dataset>.gflstm), except that an existing <dataset>.gfrnn study of an earlier
version is topped up under its old name (harness.study.sweep.study_variant), never started anew.

A model of one's own is a variant config: DIR/variant/NAME.yaml with `name: NAME` and
either `switches: {...}` (an LSTM cell, keys and values of `SWITCHES`; no code) or
`cell: {_target_: package.module.Class, ...}` (a cell given as a class, harness.models.cell_class),
run with `--config-dir DIR variant=NAME`. `resolve` turns a variant config's name,
switches and cell into its `Model`, or refuses it in one sentence. minGRU, minLSTM and
the RG-LRU are built in through the same `cell:` interface (their rows name their class,
and their configs must name the same).

`variant=` is always one model. Lists are a search option, `search.variants`: a list of
names, or one of the named lists of `LISTS` (`lstm`: Greff's nine; `all`: every model
here). No model may take the name of a list; `all` is also the analysis's name for the
pooled trials of every variant, so a model's name can never clash with it.

Adding a model: one row here (an LSTM preset in `PRESETS`, or an entry of `MODELS`), and
its conf/variant/NAME.yaml (`name: NAME`, plus the options it takes; a class's row and
config name the same `_target_`).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import UserError

# The switches of a variant config (`switches:` in conf/variant/NAME.yaml, or the mapping
# harness.models.cells.make_layer takes): every LSTM variant is one setting of them; a switch left
# out keeps its vanilla value, the first listed.
SWITCHES: dict[str, tuple] = {
    "input_gate": (True, False),                  # false: i^t = 1
    "forget_gate": (True, False, "coupled"),      # false: f^t = 1; coupled: f^t = 1 - i^t
    "output_gate": (True, False),                 # false: o^t = 1
    "input_activation": ("tanh", "linear"),       # g
    "output_activation": ("tanh", "linear"),      # h
    "peepholes": (True, False),                   # p_* of the gates present
    "gate_recurrence": (False, True),             # the R_a_b of FGR (needs all three gates)
}

# Greff et al.'s variants, each a preset of the switches above.
PRESETS: dict[str, dict] = {
    "vanilla": {},
    "nig": {"input_gate": False},
    "nfg": {"forget_gate": False},
    "nog": {"output_gate": False},
    "niaf": {"input_activation": "linear"},
    "noaf": {"output_activation": "linear"},
    "np": {"peepholes": False},
    "cifg": {"forget_gate": "coupled"},
    "fgr": {"gate_recurrence": True},
}

HOW_TO_ADD = "README, 'Your own data and your own variant'"


class UnknownModel(UserError, ValueError):
    """A name that is no model: a ValueError to Python callers, one line on the command line."""


@dataclass(frozen=True)
class LSTMSwitches:
    """Which parts of the vanilla LSTM a variant keeps (True) or changes.

    The fields are the cell's own flags; `from_switches` reads the `SWITCHES` of a variant
    config into them and `as_switches` writes them back. Impossible settings (a coupled
    forget gate without an input gate, gate recurrence without all three gates of their
    own) are refused with a UserError.
    """

    input_gate: bool = True
    forget_gate: bool = True
    output_gate: bool = True
    input_activation: bool = True  # g = tanh; False: g(x) = x
    output_activation: bool = True  # h = tanh; False: h(x) = x
    peepholes: bool = True
    coupled_input_forget_gate: bool = False  # f = 1 - i
    full_gate_recurrence: bool = False  # gates see the three gates of t-1

    def __post_init__(self):
        if self.coupled_input_forget_gate and not self.forget_gate:
            raise UserError("a forget gate cannot be both removed and coupled; use forget_gate: false or "
                            "forget_gate: coupled.")
        if self.coupled_input_forget_gate and not self.input_gate:
            raise UserError("switches forget_gate: coupled (f = 1 - i) needs the input gate; set input_gate: "
                            "true or choose forget_gate true or false.")
        own = {"input_gate": self.input_gate, "forget_gate": self.forget_gate and not self.coupled_input_forget_gate,
               "output_gate": self.output_gate}
        if self.full_gate_recurrence and not all(own.values()):
            missing = ", ".join(name for name, kept in own.items() if not kept)
            raise UserError(f"switches gate_recurrence: true needs all three gates with weights of their own, "
                            f"but {missing} is not; set gate_recurrence: false or keep the gates.")

    @classmethod
    def from_switches(cls, switches, where: str = "variant.switches") -> LSTMSwitches:
        """The cell flags of a `switches` mapping (keys and values of `SWITCHES`)."""
        if switches is None:
            switches = {}
        if not hasattr(switches, "items"):
            raise UserError(f"{where} must be a mapping of switches, e.g. {{peepholes: false}}; got {switches!r}.")
        values = {str(key): value for key, value in switches.items()}
        for key, value in values.items():
            if key not in SWITCHES:
                raise UserError(f"{where}.{key} is not a switch; use some of {', '.join(SWITCHES)}.")
            allowed = SWITCHES[key]
            if not any(type(value) is type(choice) and value == choice for choice in allowed):
                raise UserError(f"{where}.{key}: {value!r} is not one of "
                                f"{', '.join(str(c).lower() for c in allowed)}.")
        chosen = {key: values.get(key, allowed[0]) for key, allowed in SWITCHES.items()}
        return cls(
            input_gate=chosen["input_gate"],
            forget_gate=chosen["forget_gate"] is not False,
            output_gate=chosen["output_gate"],
            input_activation=chosen["input_activation"] == "tanh",
            output_activation=chosen["output_activation"] == "tanh",
            peepholes=chosen["peepholes"],
            coupled_input_forget_gate=chosen["forget_gate"] == "coupled",
            full_gate_recurrence=chosen["gate_recurrence"],
        )

    def as_switches(self) -> dict:
        """All seven switches of this cell, as a variant config writes them."""
        return {
            "input_gate": self.input_gate,
            "forget_gate": "coupled" if self.coupled_input_forget_gate else self.forget_gate,
            "output_gate": self.output_gate,
            "input_activation": "tanh" if self.input_activation else "linear",
            "output_activation": "tanh" if self.output_activation else "linear",
            "peepholes": self.peepholes,
            "gate_recurrence": self.full_gate_recurrence,
        }


@dataclass(frozen=True)
class Model:
    """One model: which equations (`cell`), which switches of the LSTM, whether a stack.

    - `cell`: "lstm" (harness.models.cells.LSTMLayer, or the GF-LSTM's cell) or "gru";
    - `switches`: the LSTM's flags of a single-layer LSTM model; None for the others
      (the GF-LSTM's cell is fixed: no peepholes, Chung et al.);
    - `gated_feedback`: a stack of `variant.layers` layers (L >= 2) joined by global
      reset gates (harness.models.gated_feedback); its config also takes `concat_layers`;
    - `target`: for `cell` "class", the class's dotted path (`cell._target_` of its
      config; harness.models.cell_class builds it).
    """

    name: str
    cell: str
    about: str
    switches: LSTMSwitches | None = None
    gated_feedback: bool = False
    target: str | None = None


LSTM_VARIANTS: dict[str, LSTMSwitches] = {
    name: LSTMSwitches.from_switches(preset, where=f"PRESETS[{name!r}]") for name, preset in PRESETS.items()
}



def _greff(name: str) -> Model:
    """The row of one of Greff et al.'s LSTM variants (a preset of PRESETS)."""
    what = f"{name.upper()}, switches {PRESETS[name]}" if PRESETS[name] else "vanilla LSTM, with peepholes"
    return Model(name, "lstm", f"Greff et al.'s {what}", LSTM_VARIANTS[name])


MODELS: dict[str, Model] = {
    **{name: _greff(name) for name in PRESETS},
    "gru": Model("gru", "gru", "the GRU of Cho et al. (2014)"),
    "gflstm": Model("gflstm", "lstm", "gated-feedback LSTM stack of Chung et al. (2015)", gated_feedback=True),
    "gfgru": Model("gfgru", "gru", "gated-feedback GRU stack of Chung et al. (2015)", gated_feedback=True),
    "mingru": Model("mingru", "class", "the minimal GRU of Feng et al. (2024)", target="harness.models.minimal.MinGRU"),
    "minlstm": Model("minlstm", "class", "the minimal LSTM of Feng et al. (2024)",
                     target="harness.models.minimal.MinLSTM"),
    "rglru": Model("rglru", "class", "Griffin's RG-LRU of De et al. (2024)", target="harness.models.griffin.RGLRU"),
}

# Former names, still accepted; each resolves to its model everywhere.
ALIASES: dict[str, str] = {"gfrnn": "gflstm"}

# The named lists of `search.variants`. `all` is also the analysis's pooled group.
LISTS: dict[str, tuple[str, ...]] = {"lstm": tuple(PRESETS), "all": tuple(MODELS)}


def canonical(name: str) -> str:
    """The model's name for a name or an alias of it (gfrnn -> gflstm)."""
    return ALIASES.get(name, name)


def choices() -> str:
    """The names `variant=` takes, for error messages."""
    return ", ".join(MODELS)


def list_error(name: str) -> UserError:
    """`variant=lstm` or `variant=all`: a list, where one model is asked for."""
    return UserError(f"variant={name} is a list of models ({', '.join(LISTS[name])}), but variant= takes one; "
                     f"sweep the list with search.variants={name} (and `odyssey train` trains one, e.g. "
                     "variant=vanilla).")


def resolve(name, switches=None, cell=None) -> Model:
    """The model of a variant config: its `name` and, for a model of one's own, its
    `switches` or its `cell` (a mapping with `_target_`, harness.models.cell_class).

    A built-in name (or an alias) gives its row of `MODELS`; a built-in name with switches
    or a cell class that differ from its own is refused (its studies and figures would
    carry the name of a model they are not), as are switches on a model without them,
    switches and a cell together, the name of a list, and a name that is neither a model
    nor carries switches or a cell (`UnknownModel`).
    """
    name = canonical(str(name))
    if switches is not None and cell is not None:
        raise UserError(f"variant '{name}' has both switches: (an LSTM of Greff's cell) and cell: (a class of its "
                        "own); keep one of them in its config.")
    if cell is not None:
        return _resolve_class(name, cell)
    if name in LISTS:
        if switches is not None:
            raise UserError(f"a model cannot be called '{name}': that is the name of a list of models "
                            "(search.variants) and of the analysis's pooled group; rename it in its variant "
                            "config.")
        raise list_error(name)
    model = MODELS.get(name)
    if switches is None:
        if model is None:
            raise UnknownModel(f"unknown variant '{name}'; choose one of {choices()}, or give its variant config "
                               f"`switches:` or `cell:` ({HOW_TO_ADD}).")
        return model
    where = f"variant '{name}': switches"
    try:
        cell = LSTMSwitches.from_switches(switches, where=where)
    except UserError as error:  # an impossible combination: say which variant has it
        if str(error).startswith("variant "):
            raise
        raise UserError(f"variant '{name}': {error}") from None
    if model is None:
        return Model(name, "lstm", f"an LSTM of switches {dict(switches)}", cell)
    if model.switches is None:
        raise UserError(f"variant '{name}' has no switches (they are the LSTM's); remove `switches:` from its "
                        "config.")
    if cell != model.switches:
        raise UserError(f"variant '{name}' is Greff's preset {PRESETS[name] or 'vanilla'}, but its config sets "
                        f"switches {dict(switches)}; give a variant of other switches a name of its own.")
    return model


def _resolve_class(name: str, cell) -> Model:
    """The model of a variant config with `cell:` (see resolve)."""
    target = cell.get("_target_") if hasattr(cell, "items") else None
    if not isinstance(target, str):
        raise UserError(f"{variant_file(name)}: cell must be a mapping with _target_, the dotted path of a class, "
                        f"e.g. cell: {{_target_: mypackage.cells.MyCell}}; got {cell!r}.")
    if name in LISTS:
        raise UserError(f"a model cannot be called '{name}': that is the name of a list of models (search.variants) "
                        "and of the analysis's pooled group; rename it in its variant config.")
    model = MODELS.get(name)
    if model is None:
        return Model(name, "class", f"a cell of one's own, {target}", target=target)
    if model.target != target:
        raise UserError(f"variant '{name}' is {model.about}" + (f" ({model.target})" if model.target else "")
                        + f", but its config's cell is {target}; give a model of its own a name of its own.")
    return model


def variant_file(name: str) -> str:
    """The variant config of model `name`, for messages: the file Hydra read it from (the
    last config directory that has it, conf/ or a --config-dir), else variant/NAME.yaml."""
    from pathlib import Path

    from harness import project_root

    directories = [project_root() / "conf"]
    try:
        from hydra.core.hydra_config import HydraConfig

        directories += [Path(source.path) for source in HydraConfig.get().runtime.config_sources
                        if source.schema == "file"]
    except (ImportError, ValueError):  # not inside a Hydra run (a test, a sweep's worker process)
        pass
    found = [d / "variant" / f"{name}.yaml" for d in directories if (d / "variant" / f"{name}.yaml").is_file()]
    return str(found[-1]) if found else f"variant/{name}.yaml"


def names_of(variants, variant: str, key: str = "search.variants") -> list[str]:
    """The models a sweep runs: `search.variants` (None: just `variant`; a name of
    `LISTS`; a model's name; or a list of names), canonical and each once. `key` names
    the config key in the messages (the bench takes lists of models too)."""
    if variants is None:
        return [canonical(variant)]
    if isinstance(variants, str):
        if variants in LISTS:
            return list(LISTS[variants])
        variants = [variants]
    if not hasattr(variants, "__iter__") or hasattr(variants, "items"):
        raise UserError(f"{key}={variants!r}: give a list of models, e.g. [vanilla, cifg], one of "
                        f"{', '.join(LISTS)}, or null (just `variant`).")
    names = []
    for entry in variants:
        name = entry.get("name") if hasattr(entry, "items") else entry
        if not isinstance(name, str):
            raise UserError(f"{key}: {entry!r} is not a model's name; give names, e.g. [vanilla, cifg].")
        if name in LISTS:
            raise UserError(f"{key}: '{name}' is a list of models; give {key}={name} alone, or list the models by "
                            "name.")
        if canonical(name) not in names:
            names.append(canonical(name))
    if not names:
        raise UserError(f"{key} is an empty list; give at least one model, or null.")
    return names


def variant_config(cfg, name: str) -> dict:
    """The variant config of model `name` in a sweep of config `cfg`: `cfg.variant` when it
    names that model, else its entry of `cfg.search.variants` when that holds configs
    (`variant_configs` puts them there), else its config file, found where Hydra finds
    configs (conf/ and a --config-dir), as `variant=NAME` would compose it."""
    from omegaconf import OmegaConf

    name = canonical(name)
    if canonical(cfg.variant.name) == name:
        return OmegaConf.to_container(cfg.variant, resolve=True)
    listed = cfg.get("search", {}).get("variants")
    if listed is not None and not isinstance(listed, str):
        for entry in listed:
            if hasattr(entry, "items") and canonical(entry.get("name")) == name:
                return OmegaConf.to_container(entry, resolve=True) if not isinstance(entry, dict) else dict(entry)
    if name in LISTS:
        raise list_error(name)
    config = _composed_variant(name)
    if config is None:
        raise UnknownModel(f"search.variants: unknown model '{name}'; choose from {choices()} (or the lists "
                           f"{', '.join(LISTS)}), or add DIR/variant/{name}.yaml with `switches:` or `cell:` and pass "
                           f"--config-dir DIR ({HOW_TO_ADD}).")
    return config


def _composed_variant(name: str) -> dict | None:
    """conf/variant/NAME.yaml (or a --config-dir's) composed by Hydra; None if there is none."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException
    from omegaconf import OmegaConf

    from harness import project_root

    try:
        if GlobalHydra.instance().is_initialized():  # inside `odyssey`: its config directories
            composed = compose(config_name="config", overrides=[f"variant={name}"])
        else:
            with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
                composed = compose(config_name="config", overrides=[f"variant={name}"])
    except MissingConfigException:
        return None
    return OmegaConf.to_container(composed.variant, resolve=True)


def variant_configs(cfg) -> list[dict]:
    """The variant configs of the models a sweep runs (`search.variants`, or just
    `variant`), each checked by `resolve`: a bad model is refused before any trial."""
    configs = []
    for name in names_of(cfg.get("search", {}).get("variants"), cfg.variant.name):
        config = variant_config(cfg, name)
        if canonical(config.get("name", name)) != name:
            raise UserError(f"search.variants: the config variant/{name}.yaml says `name: {config.get('name')}`; "
                            f"give it `name: {name}`.")
        config["name"] = canonical(config["name"])
        resolve(config["name"], config.get("switches"), config.get("cell"))
        configs.append(config)
    return configs
