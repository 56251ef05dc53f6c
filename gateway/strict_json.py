"""Strict JSON at the gateway: refuse request bodies that name an unknown field.

Envoy's gRPC-JSON transcoder follows the proto3 JSON mapping, which drops unknown
fields, and has no switch to refuse them (envoyproxy/envoy#46623): a typo such as
`mediaSize` would create an episode of size 0. A Lua filter (`strict_json.lua`, run by
`envoy.filters.http.lua` just before the transcoder) checks each JSON body against the
keys the transcoder accepts, answering 400 with the services' error shape.

The schema is rendered here from the same descriptor set the transcoder loads: for each
HTTP binding of the transcoded services, the message its body maps to (the request for
`body: "*"` and for bindings without a body, whose body the transcoder also parses; the
named field for `body: "field"`), and every message reachable from it. Each field is
known by its proto name and its json_name, as the transcoder accepts both. Lua is the
mechanism Envoy ships for this: json_to_metadata cannot list a body's keys, and ext_proc
or wasm would add a service or a toolchain to run for what a short script does in-process.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

FILTER_NAME = "podmesh.strict_json"
# Off only to measure what the check costs (tests/bench/strict_json.py).
SETTING = "PODMESH_GATEWAY_STRICT_JSON"
LUA_TEMPLATE = Path(__file__).with_name("strict_json.lua")
SCHEMA_MARKER = "{--[[schema]]}"
SOURCE_NAME = "strict_json"

HTTP_BODY = "google.api.HttpBody"
# Read by the transcoder from a JSON string or number, not an object.
SCALAR_MESSAGES = frozenset(
    f"google.protobuf.{name}"
    for name in (
        "Timestamp",
        "Duration",
        "FieldMask",
        "DoubleValue",
        "FloatValue",
        "Int64Value",
        "UInt64Value",
        "Int32Value",
        "UInt32Value",
        "BoolValue",
        "StringValue",
        "BytesValue",
    )
)
# Any JSON: their keys are data, not fields.
FREE_FORM_MESSAGES = frozenset(
    f"google.protobuf.{name}" for name in ("Struct", "Value", "ListValue", "Any")
)

_TYPE = "type.googleapis.com/envoy."
_VERBS = ("get", "put", "post", "delete", "patch")
_FD = descriptor_pb2.FieldDescriptorProto


class Kind(IntEnum):
    SCALAR = 1
    FREE_FORM = 2
    MESSAGE = 3


class Cardinality(IntEnum):
    SINGULAR = 0
    REPEATED = 1
    MAP = 2


@dataclass(frozen=True)
class Shape:
    """What a JSON value may hold: for a map, the shape of its values."""

    kind: Kind
    cardinality: Cardinality = Cardinality.SINGULAR
    message: str = ""


@dataclass(frozen=True)
class Binding:
    """One HTTP binding of an RPC, as the transcoder matches it."""

    http_method: str
    template: str
    rpc: str
    # None: the body is a google.api.HttpBody, passed through as bytes.
    root: Shape | None
    # The body's place in the request, for the field paths of errors ("" for the whole).
    prefix: str

    @property
    def segments(self) -> tuple[str, ...]:
        return template_segments(self.template)

    @property
    def lua_pattern(self) -> str:
        return lua_pattern(self.segments)


@dataclass(frozen=True)
class Schema:
    # Message full name -> every key the transcoder accepts (proto name and json_name).
    messages: Mapping[str, Mapping[str, Shape]]
    # In the transcoder's matching order for each HTTP method.
    bindings: tuple[Binding, ...]


class _Messages:
    def __init__(self, descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
        self.by_name: dict[str, descriptor_pb2.DescriptorProto] = {}
        for file in descriptor_set.file:
            prefix = f"{file.package}." if file.package else ""
            for message in file.message_type:
                self._add(prefix + message.name, message)

    def _add(self, name: str, message: descriptor_pb2.DescriptorProto) -> None:
        self.by_name[name] = message
        for nested in message.nested_type:
            self._add(f"{name}.{nested.name}", nested)

    def get(self, type_name: str) -> descriptor_pb2.DescriptorProto:
        name = type_name.removeprefix(".")
        if name not in self.by_name:
            raise ValueError(f"message {name} is not in the descriptor set")
        return self.by_name[name]


def message_shape(name: str) -> Shape:
    if name in SCALAR_MESSAGES:
        return Shape(Kind.SCALAR)
    if name in FREE_FORM_MESSAGES:
        return Shape(Kind.FREE_FORM)
    return Shape(Kind.MESSAGE, message=name)


def field_shape(messages: _Messages, field: descriptor_pb2.FieldDescriptorProto) -> Shape:
    repeated = field.label == _FD.LABEL_REPEATED
    if field.type not in (_FD.TYPE_MESSAGE, _FD.TYPE_GROUP):
        return Shape(Kind.SCALAR, Cardinality.REPEATED if repeated else Cardinality.SINGULAR)
    entry = messages.get(field.type_name)
    if repeated and entry.options.map_entry:
        (value,) = [f for f in entry.field if f.number == 2]
        return Shape(field_shape(messages, value).kind, Cardinality.MAP, _message_of(value))
    shape = message_shape(field.type_name.removeprefix("."))
    return Shape(shape.kind, Cardinality.REPEATED if repeated else shape.cardinality, shape.message)


def _message_of(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type not in (_FD.TYPE_MESSAGE, _FD.TYPE_GROUP):
        return ""
    return message_shape(field.type_name.removeprefix(".")).message


def json_keys(field: descriptor_pb2.FieldDescriptorProto) -> tuple[str, ...]:
    json_name = field.json_name or _lower_camel(field.name)
    return (field.name,) if json_name == field.name else (field.name, json_name)


def _lower_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def build_schema(
    descriptor_set: descriptor_pb2.FileDescriptorSet, services: Collection[str]
) -> Schema:
    """The keys each binding of `services` (full names) accepts in its body."""
    messages = _Messages(descriptor_set)
    bindings: list[Binding] = []
    for file in descriptor_set.file:
        for service in file.service:
            full_name = f"{file.package}.{service.name}" if file.package else service.name
            if full_name not in services:
                continue
            for method in service.method:
                for http_method, template, body in _http_bindings(method.options):
                    root, prefix = _body_shape(messages, method, body)
                    bindings.append(
                        Binding(
                            http_method=http_method,
                            template=template,
                            rpc=f"/{full_name}/{method.name}",
                            root=root,
                            prefix=prefix,
                        )
                    )
    reachable: dict[str, dict[str, Shape]] = {}
    pending = [b.root.message for b in bindings if b.root is not None and b.root.message]
    while pending:
        name = pending.pop()
        if name in reachable:
            continue
        fields: dict[str, Shape] = {}
        for field in messages.get(name).field:
            shape = field_shape(messages, field)
            for key in json_keys(field):
                fields[key] = shape
            if shape.message:
                pending.append(shape.message)
        reachable[name] = fields
    ordered = sorted(bindings, key=lambda b: (b.http_method, _precedence(b.segments)))
    return Schema(messages=dict(sorted(reachable.items())), bindings=tuple(ordered))


def _http_bindings(options: descriptor_pb2.MethodOptions) -> Iterator[tuple[str, str, str]]:
    if not options.HasExtension(annotations_pb2.http):
        return
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    for binding in (rule, *rule.additional_bindings):
        pattern = binding.WhichOneof("pattern")
        if pattern in _VERBS:
            yield pattern.upper(), getattr(binding, pattern), binding.body
        elif pattern == "custom":
            yield binding.custom.kind.upper(), binding.custom.path, binding.body


def _body_shape(
    messages: _Messages, method: descriptor_pb2.MethodDescriptorProto, body: str
) -> tuple[Shape | None, str]:
    request = method.input_type.removeprefix(".")
    if body in ("", "*"):
        # A client stream is a JSON array of requests.
        shape = message_shape(request)
        if method.client_streaming:
            shape = Shape(shape.kind, Cardinality.REPEATED, shape.message)
        return (None if request == HTTP_BODY else shape), ""
    message = messages.get(request)
    field: descriptor_pb2.FieldDescriptorProto | None = None
    for name in body.split("."):
        field = next((f for f in message.field if f.name == name), None)
        if field is None:
            raise ValueError(f"{method.name}: body field {body!r} is not in {request}")
        if field.type == _FD.TYPE_MESSAGE:
            message = messages.get(field.type_name)
    assert field is not None
    if field.type_name.removeprefix(".") == HTTP_BODY:
        return None, body
    return field_shape(messages, field), body


def template_segments(template: str) -> tuple[str, ...]:
    """The path segments the transcoder matches, variables as their own segments and the
    custom verb as a last literal ("/v1/{name=shelves/*}:get" -> v1 shelves * get)."""
    path, verb = template, ""
    colon = _verb_colon(template)
    if colon >= 0:
        path, verb = template[:colon], template[colon + 1 :]
    segments: list[str] = []
    for part in _split_top_level(path.removeprefix("/")):
        if part.startswith("{"):
            _, equals, inner = part[1:-1].partition("=")
            segments.extend(_split_top_level(inner) if equals else ["*"])
        else:
            segments.append(part)
    if verb:
        segments.append(verb)
    return tuple(segments)


def _verb_colon(template: str) -> int:
    depth = 0
    for index, char in enumerate(template):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == ":" and depth == 0:
            return index
    return -1


def _split_top_level(path: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in path:
        if char == "/" and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        current += char
    parts.append(current)
    return parts


def _precedence(segments: tuple[str, ...]) -> tuple[int, ...]:
    # The transcoder's trie tries a literal segment, then "*", then "**".
    return tuple({"*": 1, "**": 2}.get(segment, 0) for segment in segments)


def lua_pattern(segments: tuple[str, ...]) -> str:
    """A Lua pattern for the normalised request path (see `normalized` in the Lua)."""
    parts = []
    for segment in segments:
        if segment == "*":
            parts.append("[^/]*")
        elif segment == "**":
            parts.append(".*")
        else:
            parts.append(re.sub(r"([^A-Za-z0-9])", r"%\1", segment))
    return "^/" + "/".join(parts) + "$"


def lua_string(text: str) -> str:
    escaped = "".join(
        f"\\{ord(c):03d}" if c in '"\\' or not c.isprintable() or not c.isascii() else c
        for c in text
    )
    return f'"{escaped}"'


def _lua_shape(shape: Shape, index: Mapping[str, int]) -> str:
    return f"{{{int(shape.kind)}, {index.get(shape.message, 0)}, {int(shape.cardinality)}}}"


def lua_schema(schema: Schema) -> str:
    """SCHEMA as a Lua table constructor: messages by index, bindings by HTTP method."""
    index = {name: number for number, name in enumerate(schema.messages, start=1)}
    lines = ["{", "  messages = {"]
    for name, fields in schema.messages.items():
        members = ", ".join(
            f"[{lua_string(key)}] = {_lua_shape(shape, index)}" for key, shape in fields.items()
        )
        lines.append(f"    --[[{index[name]}: {name}]] {{{members}}},")
    lines += ["  },", "  bindings = {"]
    by_method: dict[str, list[Binding]] = {}
    for binding in schema.bindings:
        by_method.setdefault(binding.http_method, []).append(binding)
    for http_method, bindings in by_method.items():
        lines.append(f"    [{lua_string(http_method)}] = {{")
        for binding in bindings:
            root = "nil" if binding.root is None else _lua_shape(binding.root, index)
            lines.append(
                f"      {{pattern = {lua_string(binding.lua_pattern)}, root = {root}, "
                f"prefix = {lua_string(binding.prefix)}}}, -- {binding.rpc}"
            )
        lines.append("    },")
    lines += ["  },", "}"]
    return "\n".join(lines)


def lua_source(schema: Schema) -> str:
    template = LUA_TEMPLATE.read_text()
    if template.count(SCHEMA_MARKER) != 1:
        raise ValueError(f"{LUA_TEMPLATE} must hold {SCHEMA_MARKER} exactly once")
    return template.replace(SCHEMA_MARKER, lua_schema(schema))


def enabled_by(env: Mapping[str, str]) -> bool:
    raw = env.get(SETTING, "").strip().lower()
    if raw in ("", "1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{SETTING}={raw!r}: expected true or false")


def http_filter(
    descriptor_set: descriptor_pb2.FileDescriptorSet, services: Collection[str]
) -> dict[str, Any]:
    """The filter, off by default: `route_config` switches it on for the REST route."""
    return {
        "name": FILTER_NAME,
        "disabled": True,
        "typed_config": {
            "@type": _TYPE + "extensions.filters.http.lua.v3.Lua",
            "stat_prefix": "strict_json",
            "source_codes": {
                SOURCE_NAME: {"inline_string": lua_source(build_schema(descriptor_set, services))}
            },
        },
    }


def route_config() -> dict[str, Any]:
    return {
        FILTER_NAME: {
            "@type": _TYPE + "config.route.v3.FilterConfig",
            "config": {
                "@type": _TYPE + "extensions.filters.http.lua.v3.LuaPerRoute",
                "name": SOURCE_NAME,
            },
        }
    }
