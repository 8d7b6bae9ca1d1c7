"""Writing a weight dict of the weight contract into a module's parameters.

Each module of the contract (harness.cells' layers, harness.gated_feedback's stacks)
keeps a dict of views into its own parameters, one for each key of its weights in the
paper's notation; `import_into` is the one way all of them check and copy an imported
dict. It lives apart from both modules so that neither reaches into the other.
"""

from __future__ import annotations

import torch


def import_into(views: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], owner: str) -> None:
    """Copy `weights` into the parameter views `views`; refuse missing or extra keys
    (naming them) and wrong shapes. `owner` names the module in the message."""
    missing = sorted(set(views) - set(weights))
    extra = sorted(set(weights) - set(views))
    if missing or extra:
        raise KeyError(f"{owner}.import_weights: missing keys {missing}, unexpected keys {extra}")
    with torch.no_grad():
        for key, view in views.items():
            value = torch.as_tensor(weights[key])
            if value.shape != view.shape:
                raise ValueError(f"{owner}.import_weights: {key} has shape {tuple(value.shape)}, "
                                 f"expected {tuple(view.shape)}")
            view.copy_(value)
