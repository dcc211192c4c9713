"""Import workarounds for third-party packages, kept in one place.

``import_torchvision()`` must run before anything imports torchvision, directly or through
open_clip, timm, transformers or diffusers. Why: the PyPI torchvision 0.28.0 wheel, installed
beside the CPU-only torch 2.13.0 this project pins, fails at import with ``operator
torchvision::nms does not exist``. Its ``_meta_registrations`` module registers meta kernels for
compiled ops the wheel cannot load here; registering an empty module under that name lets the
rest of torchvision (transforms, models) import, while ``torchvision.ops`` stays unusable
(ENVIRONMENT.md). On an install whose torchvision matches torch the first import succeeds and
nothing is patched.
"""

from __future__ import annotations

import sys
import types
from types import ModuleType

__all__ = ["import_torchvision"]

_META = "torchvision._meta_registrations"


def import_torchvision() -> ModuleType:
    """Import torchvision, registering the empty meta-registration shim only if it is needed."""
    if _META not in sys.modules:
        try:
            import torchvision

            return torchvision
        except RuntimeError as err:
            if "torchvision::" not in str(err):
                raise
            # A failed import leaves half-initialised torchvision modules behind; drop them so
            # the second import starts clean.
            for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
                del sys.modules[name]
            sys.modules[_META] = types.ModuleType(_META)
    import torchvision

    return torchvision
