"""Makes the generated stubs importable when the SDK runs from a checkout.

The stubs are generated into `gen/` by `make gen` (never committed), after the
editable install, so they are not on the installed console script's path. From a
checkout the SDK finds them beside itself; elsewhere put a generated `gen/` on
PYTHONPATH.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def ensure_stubs() -> None:
    if importlib.util.find_spec("podmesh") is not None:
        return
    checkout_gen = Path(__file__).resolve().parent.parent / "gen"
    if (checkout_gen / "podmesh").is_dir():
        sys.path.insert(0, str(checkout_gen))
        return
    raise ImportError("the generated podmesh stubs are missing: run `make gen` in the checkout")
