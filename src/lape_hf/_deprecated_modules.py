"""Module paths of lape_hf 0.1 that moved when the package was laid out by role.

`import lape_hf.data` (and the others below) still works: it returns the module at its new path and warns once
with that path, so code written against 0.1 keeps running while it is updated.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED_MODULES = {
    "lape_hf.configuration_lape_vit": "lape_hf.models.lape_vit.configuration_lape_vit",
    "lape_hf.modeling_lape_vit": "lape_hf.models.lape_vit.modeling_lape_vit",
    "lape_hf.image_processing": "lape_hf.models.lape_vit.image_processing_lape_vit",
    "lape_hf.data": "lape_hf.training.data",
    "lape_hf.transforms": "lape_hf.training.transforms",
    "lape_hf.experiments": "lape_hf.training.experiments",
    "lape_hf.model_card": "lape_hf.hub.model_card",
    "lape_hf.benchmark": "lape_hf.tools.benchmark",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new_name: str):
        self.new_name = new_name

    def create_module(self, spec):
        return importlib.import_module(self.new_name)

    def exec_module(self, module) -> None:
        pass


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED_MODULES:
            return None
        new_name = MOVED_MODULES[fullname]
        warnings.warn(
            f"{fullname} moved to {new_name}; import it from there (the old path will be removed in lape_hf 0.3).",
            FutureWarning,
            stacklevel=3,
        )
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new_name))


def install() -> None:
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
