"""Makes the generated stubs importable when the SDK runs from a checkout.

The stubs are generated into `gen/` by `make gen`, after the editable install, so the
console script cannot rely on them being on the path; a wheel built after `make gen`
ships them as the top-level `podmesh` package instead.
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
