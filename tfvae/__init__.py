"""tfvae: variational autoencoders for TensorFlow/Keras, with TFP distributions and export to TFLite.

The public names load on first use (PEP 562), so `import tfvae` and the `tfvae` command start in a
fraction of a second instead of the ~7 s of importing TensorFlow: `tfvae.VAE`, `from tfvae import data`
and the rest import what they need when they are first touched.
"""

import importlib
import importlib.abc
import sys

__all__ = [
    "VAE",
    "OutlierDetector",
    "callbacks",
    "data",
    "evaluate",
    "export",
    "heads",
    "inference",
    "networks",
    "objectives",
    "ood",
    "schedules",
    "sources",
    "training",
]
__version__ = "0.1.0"

# Every submodule, the public ones and those an eager import of the public ones made attributes too.
_SUBMODULES = frozenset(__all__[2:]) | {
    "arguments", "atomic", "checks", "cli", "conditions", "distribute", "launch", "model", "noise", "parity", "plots",
    "resources", "schedule_specs", "signatures", "trainer"}


def __getattr__(name):
    if name == "VAE":
        return importlib.import_module("tfvae.model").VAE
    if name == "OutlierDetector":
        return importlib.import_module("tfvae.ood").OutlierDetector
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*(name for name in globals() if name.startswith("__")), *__all__, *_SUBMODULES})


class _KerasRegistration(importlib.abc.MetaPathFinder):
    """Imports tfvae.model as soon as Keras has been imported, by whomever.

    Importing tfvae.model registers tfvae's model and layers with Keras (`tfvae>VAE`, ...), so
    `keras.models.load_model` reads a tfvae model after a bare `import tfvae`, as it did when this file
    imported everything. It waits until no import of TensorFlow, Keras or a tfvae module is under way:
    TensorFlow imports Keras half-way through its own import, and tfvae.model needs both whole. The
    finder only wraps the loaders of those modules; it removes itself once tfvae.model is imported.
    """

    def __init__(self):
        self.imports_under_way = 0

    def find_spec(self, fullname, path, target=None):
        if fullname not in ("tensorflow", "keras") and not fullname.startswith("tfvae."):
            return None
        for finder in sys.meta_path[sys.meta_path.index(self) + 1 :]:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if hasattr(spec.loader, "exec_module"):
                    spec.loader = _ThenRegister(spec.loader, self)
                return spec
        return None

    def imported(self):
        if self.imports_under_way or "keras" not in sys.modules:
            return
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        importlib.import_module("tfvae.model")


class _ThenRegister(importlib.abc.Loader):
    """A module's own loader, followed by `_KerasRegistration.imported` once the module has run."""

    def __init__(self, loader, registration):
        self.loader = loader
        self.registration = registration

    def __getattr__(self, name):  # the rest of the loader's interface: resources, is_package, ...
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        # The module sees its own loader, for its resources and for introspection.
        module.__loader__ = module.__spec__.loader = self.loader
        self.registration.imports_under_way += 1
        try:
            self.loader.exec_module(module)
        finally:
            self.registration.imports_under_way -= 1
        self.registration.imported()


if "keras" in sys.modules:
    importlib.import_module("tfvae.model")
else:
    sys.meta_path.insert(0, _KerasRegistration())
