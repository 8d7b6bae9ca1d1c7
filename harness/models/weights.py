"""The weight contract: a module's weights as a dict in the paper's notation.

Every module of the contract (harness.models.cells' layers, harness.models.gated_feedback's stacks)
derives from `WeightContract` and says only where each key of its weights lives, as
`weight_views()`: {key: a view into its own parameters}. Exporting and importing are then
the same for every cell kind: `export_weights()` copies the views out, `import_weights()`
checks a dict against them (missing or extra keys, shapes) and copies it in. The keys of
each kind are in docs/cells.md. This module lives apart from both so that neither reaches
into the other.
"""

from __future__ import annotations

import torch


class WeightContract:
    """`export_weights` and `import_weights` from a module's `weight_views()`."""

    def weight_views(self) -> dict[str, torch.Tensor]:
        """{key in the paper's notation: a view into the parameters that holds it}."""
        raise NotImplementedError

    def export_weights(self) -> dict[str, torch.Tensor]:
        """{key: tensor}, copies detached from the parameters."""
        return {key: view.detach().clone() for key, view in self.weight_views().items()}

    def import_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy `weights` into the parameters; refuses a dict whose keys differ (naming the
        missing and the extra ones) or whose shapes do."""
        import_into(self.weight_views(), weights, type(self).__name__)


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
