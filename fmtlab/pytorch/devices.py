"""Where a model's tensors live."""

from __future__ import annotations

import torch

__all__ = ["model_device"]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")
