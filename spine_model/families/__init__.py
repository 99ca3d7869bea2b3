"""Model families behind one seam, in the spirit of timm's `create_model`.

A family supplies its dataset, its model factory, its loss, and the mapping from its outputs to
probabilities per (study, condition, level); see `base.ModelFamily`. The training loop,
evaluation, checkpoints, MLflow logging, the serving model, compare and predict reach a family only
through `get_family(config.model_family)`; nothing outside a family's folder knows its tensors.

A new family is a new folder here with a module-level `FAMILY`, one line in FAMILY_MODULES, and
its name and settings in spine_model.core.config (TrainConfig's fields, and the checks of what
the family cannot use). This module stays import-light (no torch): flows read it for the form.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from spine_model.core.config import FAMILY_NAMES

if TYPE_CHECKING:
    from spine_model.families.base import ModelFamily

FAMILY_MODULES: dict[str, str] = {
    "seed": "spine_model.families.seed",
    "crops": "spine_model.families.crops",
    "localiser": "spine_model.families.localiser",
}
if tuple(FAMILY_MODULES) != FAMILY_NAMES:  # the config's names and the modules must agree
    raise ImportError(f"model families {tuple(FAMILY_MODULES)} differ from TrainConfig's {FAMILY_NAMES}")


def get_family(name: str) -> ModelFamily:
    """The family registered under `name`."""
    if name not in FAMILY_MODULES:
        raise ValueError(f"unknown model family {name!r}; choose one of {list(FAMILY_MODULES)}")
    return importlib.import_module(FAMILY_MODULES[name]).FAMILY
