"""What every service checks of a podmesh.type.v1.Money's currency."""

from __future__ import annotations

import re

# Upper-case ISO 4217 letters only; fullmatch, so no trailing newline slips through.
_CURRENCY_CODE = re.compile(r"[A-Z]{3}")


def is_currency_code(text: str) -> bool:
    return _CURRENCY_CODE.fullmatch(text) is not None
