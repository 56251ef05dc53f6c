"""Strict request input, checked once for every service before any handler runs.

Three checks, in this order: the raw bytes against the method's size limit (before
parsing, so an oversized request costs no parse), the parse itself (bytes that are
not the request message, invalid UTF-8 in a string field included), and a walk of the
parsed message for text PostgreSQL cannot store (NUL) and enum numbers the contract
does not declare. Each failure is INVALID_ARGUMENT with a reason, never UNKNOWN or
INTERNAL.

Size limits answer INVALID_ARGUMENT (REQUEST_TOO_LARGE), not RESOURCE_EXHAUSTED: the
request is wrong whatever the state of the system, as google.rpc.Code defines
INVALID_ARGUMENT, while RESOURCE_EXHAUSTED (HTTP 429) tells clients to retry later,
which never helps; the domain's own size errors (BATCH_TOO_LARGE, FEED_TOO_LARGE) are
INVALID_ARGUMENT too. Methods with a documented size (4 MiB batches, feed documents)
get a limit with room above it, so requests just over still get the domain's answer.
Only past the server's receive limit does gRPC itself answer RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from services.shared.errors import DomainError, FieldViolation, InvalidArgument

KIB = 1024
MIB = 1024 * KIB
# Enough for every request made of ids, names, filters and settings.
DEFAULT_MAX_REQUEST_BYTES = 64 * KIB


@dataclass(frozen=True)
class InputRule:
    """What a method accepts beyond the default."""

    max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    # Top-level fields the shared walk leaves to the method, which checks them itself
    # item by item: one bad record of an ingestion batch is refused alone, the batch
    # is not.
    unchecked_fields: frozenset[str] = frozenset()


DEFAULT_RULE = InputRule()
InputRules = Mapping[str, InputRule]


# Unparsed bytes cost little to hold; this much over the largest limit still gets the
# method's own answer (REQUEST_TOO_LARGE) rather than gRPC's bare RESOURCE_EXHAUSTED.
RECEIVE_MARGIN_BYTES = MIB


def receive_limit(rules: InputRules) -> int:
    """The server's receive limit: what the most demanding method needs, and a margin."""
    largest = max([DEFAULT_MAX_REQUEST_BYTES, *(rule.max_bytes for rule in rules.values())])
    return largest + RECEIVE_MARGIN_BYTES


class _Refused:
    """What a guarded deserializer hands on instead of a message.

    gRPC answers UNKNOWN for any exception a deserializer raises, before the
    interceptor sees the call; handing the error on lets the handler raise it.
    """

    __slots__ = ("error",)

    def __init__(self, error: DomainError) -> None:
        self.error = error


def guarded_deserializer(
    deserializer: Callable[[bytes], Any] | None, max_bytes: int
) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        if len(raw) > max_bytes:
            return _Refused(
                InvalidArgument(
                    [],
                    f"the request is {len(raw):,} bytes; this method accepts at most {max_bytes:,}",
                    reason="REQUEST_TOO_LARGE",
                    metadata={"max_bytes": str(max_bytes)},
                )
            )
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        # DecodeError in practice; hostile bytes must not reach the client as UNKNOWN
        # whichever way the parser gives up.
        except Exception:
            return _Refused(
                InvalidArgument(
                    [],
                    "the request is not a valid protobuf message of this method "
                    "(string fields must be UTF-8)",
                    reason="MALFORMED_REQUEST",
                )
            )

    return parse


def accept(request: Any, rule: InputRule) -> Any:
    """The parsed request, or the INVALID_ARGUMENT it earned."""
    if isinstance(request, _Refused):
        raise request.error
    if isinstance(request, Message):
        violations = text_and_enum_violations(request, rule.unchecked_fields)
        if violations:
            reasons = {v.reason for v in violations}
            raise InvalidArgument(
                violations, reason=reasons.pop() if len(reasons) == 1 else "INVALID_FIELD_VALUES"
            )
    return request


async def accept_stream(requests: AsyncIterable[Any], rule: InputRule) -> AsyncIterator[Any]:
    async for request in requests:
        yield accept(request, rule)


# --- the walk ------------------------------------------------------------------------

NUL_REASON = "NUL_CHARACTER"
ENUM_REASON = "UNKNOWN_ENUM_VALUE"
_STRING = FieldDescriptor.TYPE_STRING
_ENUM = FieldDescriptor.TYPE_ENUM
_MESSAGE = FieldDescriptor.TYPE_MESSAGE


@dataclass(frozen=True, slots=True)
class _Check:
    """One field worth a look. For maps, `key` and `value` describe the entry."""

    type: int
    repeated: bool
    enum_numbers: frozenset[int] = frozenset()
    enum_name: str = ""
    message: Descriptor | None = None
    key: _Check | None = None
    value: _Check | None = None


# Per message type, the fields that can hold text or enums, directly or below; empty
# for types that cannot, whose messages are then not walked at all.
_plans: dict[Descriptor, tuple[tuple[str, _Check], ...]] = {}
_holds: dict[Descriptor, bool] = {}


def _direct(descriptor: Descriptor) -> bool:
    return any(f.type in (_STRING, _ENUM) for f in descriptor.fields)


def _holds_checkable(descriptor: Descriptor) -> bool:
    """Whether any message reachable from this type has a string or enum field."""
    known = _holds.get(descriptor)
    if known is not None:
        return known
    seen = {descriptor}
    pending = [descriptor]
    found = False
    while pending and not found:
        current = pending.pop()
        found = _direct(current)
        for f in current.fields:
            child = f.message_type
            if child is not None and child not in seen:
                seen.add(child)
                pending.append(child)
    _holds[descriptor] = found
    return found


def _check_of(field: FieldDescriptor, repeated: bool) -> _Check | None:
    if field.type == _STRING:
        return _Check(_STRING, repeated)
    if field.type == _ENUM and (enum := field.enum_type) is not None:
        return _Check(_ENUM, repeated, frozenset(enum.values_by_number), enum.full_name)
    if field.type == _MESSAGE and (entry := field.message_type) is not None:
        if entry.GetOptions().map_entry:
            key = _check_of(entry.fields_by_name["key"], False)
            value = _check_of(entry.fields_by_name["value"], False)
            if key is None and value is None:
                return None
            return _Check(_MESSAGE, repeated, key=key, value=value)
        if _holds_checkable(entry):
            return _Check(_MESSAGE, repeated, message=entry)
    return None


def _plan(descriptor: Descriptor) -> tuple[tuple[str, _Check], ...]:
    plan = _plans.get(descriptor)
    if plan is None:
        checks: list[tuple[str, _Check]] = []
        if _holds_checkable(descriptor):
            for field in descriptor.fields:
                check = _check_of(field, field.is_repeated)
                if check is not None:
                    checks.append((field.name, check))
        plan = _plans[descriptor] = tuple(checks)
    return plan


def text_and_enum_violations(
    message: Message, unchecked: frozenset[str] = frozenset()
) -> list[FieldViolation]:
    """NUL characters in strings and undeclared enum numbers, anywhere in the message.

    Paths are proto field names: `user.email`, `filters[2]`, `labels[key]`.
    """
    out: list[FieldViolation] = []
    _walk(message, "", unchecked, out)
    return out


# Reads only the planned fields (ListFields would build every set field, durations and
# timestamps included), tests whole repeated fields at once, and builds a path only for
# a violation: the walk is on the path of every request.
def _walk(message: Message, prefix: str, skip: frozenset[str], out: list[FieldViolation]) -> None:
    for name, check in _plan(cast(Descriptor, message.DESCRIPTOR)):
        if name in skip:
            continue
        if check.type == _MESSAGE and not check.repeated:
            if message.HasField(name):
                _one(getattr(message, name), prefix + name, check, out)
            continue
        value = getattr(message, name)
        if not value:
            continue
        if check.key is not None or check.value is not None:
            _map(value, prefix + name, check, out)
        elif not check.repeated:
            _one(value, prefix + name, check, out)
        elif check.type == _STRING:
            if "\0" in "".join(value):
                for index, item in enumerate(value):
                    _one(item, f"{prefix}{name}[{index}]", check, out)
        elif check.type == _ENUM:
            if not check.enum_numbers.issuperset(value):
                for index, item in enumerate(value):
                    _one(item, f"{prefix}{name}[{index}]", check, out)
        else:
            for index, item in enumerate(value):
                _walk(item, f"{prefix}{name}[{index}].", frozenset(), out)


def _map(entries: Any, path: str, check: _Check, out: list[FieldViolation]) -> None:
    for key, value in entries.items():
        if check.key is not None:
            _one(key, path, check.key, out, "a key ")
        if check.value is not None:
            # A key with NUL is reported above; its entry's path would carry the NUL.
            shown = key if not isinstance(key, str) or "\0" not in key else "?"
            _one(value, f"{path}[{shown}]", check.value, out)


def _one(value: Any, path: str, check: _Check, out: list[FieldViolation], what: str = "") -> None:
    if check.type == _STRING:
        if "\0" in value:
            out.append(FieldViolation(path, f"{what}must not contain NUL characters", NUL_REASON))
    elif check.type == _ENUM:
        if value not in check.enum_numbers:
            out.append(
                FieldViolation(path, f"{value} is not a value of {check.enum_name}", ENUM_REASON)
            )
    elif check.message is not None:
        _walk(value, path + ".", frozenset(), out)
