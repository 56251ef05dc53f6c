"""Strict JSON at the gateway: the schema rendered from a descriptor set, and the Lua
check it drives, run by a real Envoy in front of the reflection server (every RPC
answers UNIMPLEMENTED there, so 501 means the body got past the check and the
transcoder)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from grpc_tools import protoc

from devstack import protogen
from gateway import envoy_config, strict_json
from gateway.envoy_config import load_descriptor_set, podmesh_services, render_envoy_config
from gateway.strict_json import Binding, Cardinality, Kind, Schema, Shape

ROOT = Path(__file__).resolve().parents[2]
ENVOY = Path(sys.executable).parent / "envoy"
TIMEOUT_S = 30.0
PASSED = 501

PROBE_PROTO = """
syntax = "proto3";
package podmesh.probe.v1;

import "google/api/annotations.proto";
import "google/api/httpbody.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

service ProbeService {
  rpc CreateThing(CreateThingRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = {post: "/v1/{parent=shelves/*}/things" body: "*"};
  }
  rpc CreateSpecialThing(CreateThingRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = {post: "/v1/shelves/special/things" body: "*"};
  }
  rpc UpdateThing(UpdateThingRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = {patch: "/v1/things/{thing.display_name}" body: "thing"};
  }
  rpc DeleteThing(DeleteThingRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = {delete: "/v1/things/{name}"};
  }
  rpc SearchThings(DeleteThingRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = {
      get: "/v1/things:search"
      additional_bindings {post: "/v1/things:search" body: "*"}
    };
  }
  rpc UploadThing(google.api.HttpBody) returns (google.protobuf.Empty) {
    option (google.api.http) = {post: "/v1/things:upload" body: "*"};
  }
  rpc AttachThing(AttachThingRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = {post: "/v1/{name=things/*}:attach" body: "blob"};
  }
  rpc TagThings(TagThingsRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = {post: "/v1/things:tag" body: "tags"};
  }
  rpc ImportThings(stream CreateThingRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = {post: "/v1/things:import" body: "*"};
  }
}

message Thing {
  string display_name = 1;
  Part part = 2;
  repeated Part parts = 3;
  map<string, Part> parts_by_key = 4;
  map<string, string> labels = 5;
  oneof source {
    string source_url = 6;
    int64 source_id = 7;
  }
  google.protobuf.Timestamp create_time = 8;
  google.protobuf.Duration length = 9;
  google.protobuf.Struct extra = 10;
  google.protobuf.Value anything = 11;
  google.protobuf.Int32Value count = 12;
  google.protobuf.FieldMask mask = 13;
  repeated string aliases = 14;
  bytes payload = 15;
  string custom = 16 [json_name = "customName"];
}

message Part {
  string part_name = 1;
  Thing owner = 2;
}

message CreateThingRequest {
  string parent = 1;
  Thing thing = 2;
}

message UpdateThingRequest {
  Thing thing = 1;
  google.protobuf.FieldMask update_mask = 2;
}

message DeleteThingRequest {
  string name = 1;
  bool force = 2;
}

message AttachThingRequest {
  string name = 1;
  google.api.HttpBody blob = 2;
}

message TagThingsRequest {
  repeated Part tags = 1;
}
"""


@pytest.fixture(scope="module")
def probe_descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("strict_json")
    (workdir / "podmesh" / "probe" / "v1").mkdir(parents=True)
    (workdir / "podmesh" / "probe" / "v1" / "probe.proto").write_text(PROBE_PROTO)
    out = workdir / "probe.pb"
    code = protoc.main(
        [
            "protoc",
            f"-I{workdir}",
            f"-I{protogen.googleapis_root()}",
            f"-I{protogen.wkt_root()}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            "podmesh/probe/v1/probe.proto",
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def schema(probe_descriptor_set: Path) -> Schema:
    return strict_json.build_schema(
        load_descriptor_set(probe_descriptor_set), ["podmesh.probe.v1.ProbeService"]
    )


def binding(schema: Schema, rpc: str, http_method: str = "") -> Binding:
    (found,) = [
        b
        for b in schema.bindings
        if b.rpc.endswith("/" + rpc) and http_method in ("", b.http_method)
    ]
    return found


THING = "podmesh.probe.v1.Thing"
PART = "podmesh.probe.v1.Part"


# --- the schema -------------------------------------------------------------------------


def test_fields_are_known_by_proto_name_and_json_name(schema: Schema) -> None:
    thing = schema.messages[THING]
    assert thing["display_name"] == thing["displayName"] == Shape(Kind.SCALAR)
    assert thing["custom"] == thing["customName"] == Shape(Kind.SCALAR)
    assert "custom_name" not in thing
    # A name without an underscore is its own json_name.
    assert thing["part"] == Shape(Kind.MESSAGE, message=PART)


def test_nested_repeated_map_and_oneof_fields(schema: Schema) -> None:
    thing = schema.messages[THING]
    assert thing["parts"] == Shape(Kind.MESSAGE, Cardinality.REPEATED, PART)
    assert thing["partsByKey"] == Shape(Kind.MESSAGE, Cardinality.MAP, PART)
    assert thing["labels"] == Shape(Kind.SCALAR, Cardinality.MAP)
    assert thing["aliases"] == Shape(Kind.SCALAR, Cardinality.REPEATED)
    assert thing["sourceUrl"] == thing["source_id"] == Shape(Kind.SCALAR)
    # Recursive messages are listed once.
    assert schema.messages[PART]["owner"] == Shape(Kind.MESSAGE, message=THING)


def test_well_known_types_are_scalars_or_free_form(schema: Schema) -> None:
    thing = schema.messages[THING]
    for name in ("createTime", "length", "count", "mask", "payload"):
        assert thing[name] == Shape(Kind.SCALAR), name
    assert thing["extra"] == thing["anything"] == Shape(Kind.FREE_FORM)
    assert not any(name.startswith("google.protobuf.") for name in schema.messages)


def test_the_body_field_of_each_binding(schema: Schema) -> None:
    request = Shape(Kind.MESSAGE, message="podmesh.probe.v1.CreateThingRequest")
    create = binding(schema, "CreateThing")
    assert (create.http_method, create.root, create.prefix) == ("POST", request, "")
    update = binding(schema, "UpdateThing")
    assert (update.http_method, update.root, update.prefix) == (
        "PATCH",
        Shape(Kind.MESSAGE, message=THING),
        "thing",
    )
    # Without a body field the transcoder still reads a body, as the whole request.
    delete = binding(schema, "DeleteThing")
    assert delete.root == Shape(Kind.MESSAGE, message="podmesh.probe.v1.DeleteThingRequest")
    tags = binding(schema, "TagThings")
    assert (tags.root, tags.prefix) == (Shape(Kind.MESSAGE, Cardinality.REPEATED, PART), "tags")
    # A client stream is a JSON array of requests.
    assert binding(schema, "ImportThings").root == Shape(
        Kind.MESSAGE, Cardinality.REPEATED, request.message
    )
    assert [b.http_method for b in schema.bindings if b.rpc.endswith("/SearchThings")] == [
        "GET",
        "POST",
    ]


def test_http_body_bodies_are_not_inspected(schema: Schema) -> None:
    assert binding(schema, "UploadThing").root is None
    attach = binding(schema, "AttachThing")
    assert (attach.root, attach.prefix) == (None, "blob")
    assert "google.api.HttpBody" not in schema.messages


def test_bindings_are_in_the_transcoders_matching_order(schema: Schema) -> None:
    posts = [b.rpc.rsplit("/", 1)[1] for b in schema.bindings if b.http_method == "POST"]
    # A literal segment is tried before a variable one.
    assert posts.index("CreateSpecialThing") < posts.index("CreateThing")


def test_templates_become_the_transcoders_segments() -> None:
    assert strict_json.template_segments("/v1/{name=shelves/*/books/**}:get") == (
        *("v1", "shelves", "*", "books", "**", "get"),
    )
    assert strict_json.template_segments("/api/v1/episodes/{episode.id}") == (
        *("api", "v1", "episodes", "*"),
    )
    assert strict_json.lua_pattern(("v1", "a-b.c", "*", "x", "**")) == ("^/v1/a%-b%.c/[^/]*/x/.*$")


def test_the_lua_source_embeds_the_schema(schema: Schema) -> None:
    source = strict_json.lua_source(schema)
    assert strict_json.SCHEMA_MARKER not in source
    assert '["customName"]' in source
    assert '"^/v1/shelves/special/things$"' in source


def test_the_setting_turns_the_check_off(probe_descriptor_set: Path) -> None:
    assert strict_json.enabled_by({})
    assert strict_json.enabled_by({strict_json.SETTING: "true"})
    assert not strict_json.enabled_by({strict_json.SETTING: "false"})
    with pytest.raises(ValueError, match=strict_json.SETTING):
        strict_json.enabled_by({strict_json.SETTING: "maybe"})
    names = [f["name"] for f in http_filters(render(probe_descriptor_set, 0, strict=False))]
    assert strict_json.FILTER_NAME not in names


def test_the_real_contracts_check_every_write() -> None:
    if not protogen.DESCRIPTOR_SET.exists():
        protogen.generate()
    descriptors = load_descriptor_set(protogen.DESCRIPTOR_SET)
    services = [s.full_name for s in podmesh_services(descriptors)]
    schema = strict_json.build_schema(descriptors, services)
    writes = {b.rpc.rsplit("/", 1)[1] for b in schema.bindings if b.http_method != "GET"}
    assert {"CreateEpisode", "UpdateEpisode", "CreateUser", "IngestListenerEvents"} <= writes
    # Only Stripe's webhook takes its body as raw bytes: its signature covers them.
    raw = {b.rpc.rsplit("/", 1)[1] for b in schema.bindings if b.root is None}
    assert raw == {"HandleStripeWebhook"}


# --- through Envoy ----------------------------------------------------------------------


def render(descriptor_set: Path, upstream_port: int, *, strict: bool = True) -> dict[str, Any]:
    upstream = ("127.0.0.1", upstream_port)
    return render_envoy_config(
        descriptor_set,
        listen_host="127.0.0.1",
        listen_port=0,
        admin_port=0,
        upstreams={"probe": [upstream]},
        reflection_upstream=upstream,
        strict_json_bodies=strict,
    )


def http_filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    listener = config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters: list[dict[str, Any]] = hcm["http_filters"]
    return filters


def wait_for_text(path: Path, process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return text
        if process.poll() is not None:
            raise AssertionError(log.read_text(errors="replace")[-4000:])
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing in {path}")
        time.sleep(0.05)


@contextmanager
def started(args: list[str | Path], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Gateway:
    url: str

    def send(self, method: str, path: str, body: str | bytes) -> httpx.Response:
        return httpx.request(
            method,
            self.url + path,
            content=body,
            headers={"content-type": "application/json"},
            timeout=TIMEOUT_S,
        )


@pytest.fixture(scope="module")
def gateway(
    probe_descriptor_set: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("strict_json_gateway")
    reflection_log = workdir / "reflection.log"
    reflection_args: list[str | Path] = [
        sys.executable,
        *("-m", "gateway.reflection", "--descriptor-set", probe_descriptor_set),
        *("--host", "127.0.0.1", "--port", "0"),
    ]
    with started(reflection_args, reflection_log) as reflection:
        deadline = time.monotonic() + TIMEOUT_S
        while not (found := re.search(r"listening on \S+:(\d+)", reflection_log.read_text())):
            assert reflection.poll() is None, reflection_log.read_text()
            assert time.monotonic() < deadline, "the reflection server did not start"
            time.sleep(0.05)
        config_path = workdir / "envoy.json"
        config_path.write_text(json.dumps(render(probe_descriptor_set, int(found[1]))))
        admin_path = workdir / "admin.address"
        envoy_log = workdir / "envoy.log"
        envoy_args: list[str | Path] = [
            ENVOY,
            *("-c", config_path, "--disable-hot-restart", "--concurrency", "1"),
            *("--admin-address-path", admin_path, "--log-level", "warn"),
        ]
        with started(envoy_args, envoy_log) as envoy, httpx.Client(timeout=5) as http:
            admin = "http://" + wait_for_text(admin_path, envoy, envoy_log)
            while True:
                try:
                    if http.get(f"{admin}/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert envoy.poll() is None, envoy_log.read_text()
                time.sleep(0.05)
            listeners = http.get(f"{admin}/listeners", params={"format": "json"}).json()
            address = listeners["listener_statuses"][0]["local_address"]["socket_address"]
            yield Gateway(f"http://127.0.0.1:{address['port_value']}")


def unknown_field(response: httpx.Response) -> str:
    """The field a 400 UNKNOWN_FIELD names, checked against the services' error shape."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    field = body["details"][0]["metadata"]["field"]
    assert body == {
        "code": 3,
        "message": f"invalid request: {field}: unknown field",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "UNKNOWN_FIELD",
                "domain": "podmesh.dev",
                "metadata": {"field": field},
            },
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": "unknown field"}],
            },
        ],
    }
    return str(field)


CREATE = ("POST", "/v1/shelves/s1/things")

VALID = {
    "json names": (CREATE, '{"parent": "p", "thing": {"displayName": "x", "sourceUrl": "u"}}'),
    "proto names": (CREATE, '{"parent": "p", "thing": {"display_name": "x", "source_id": "7"}}'),
    "json_name option": (CREATE, '{"thing": {"customName": "x", "custom": "y"}}'),
    "nested and repeated": (
        CREATE,
        '{"thing": {"part": {"partName": "a", "owner": {"parts": [{"part_name": "b"}]}},'
        ' "parts": [{"partName": "c"}, {}], "aliases": ["a", "b"]}}',
    ),
    "a single object for a repeated field": (CREATE, '{"thing": {"parts": {"partName": "c"}}}'),
    "maps take any key": (
        CREATE,
        '{"thing": {"labels": {"any key": "v", "displayName": "w"},'
        ' "partsByKey": {"k 1": {"partName": "a"}, "k2": {}}}}',
    ),
    "well-known types": (
        CREATE,
        '{"thing": {"createTime": "2024-05-01T10:00:00Z", "length": "1.5s", "count": 3,'
        ' "mask": "displayName,parts", "payload": "AAEC"}}',
    ),
    "free-form struct and value": (
        CREATE,
        '{"thing": {"extra": {"anything": {"goes": [1, {"here": null}]}},'
        ' "anything": [{"bogus": true}, "x", 1.5e-3, null]}}',
    ),
    "unicode escapes in keys and values": (
        CREATE,
        '{"th\\u0069ng": {"display\\u004eame": "caf\\u00e9 \\ud83d\\ude00"}}',
    ),
    "strings holding braces, quotes and escapes": (
        CREATE,
        '{"thing": {"displayName": "{\\"bogus\\": [1]} \\\\", "sourceUrl": "}]\\\\\\""}}',
    ),
    "numbers and literals": (
        CREATE,
        '{"thing": {"sourceId": -12.5e+3, "count": null, "aliases": ["", "\\\\"],'
        ' "part": null, "displayName": ""}}',
    ),
    "white space everywhere": (CREATE, ' \n\t{ "thing" :\r\n { "parts" : [ { } ] } }\n '),
    "the transcoder's lenient syntax": (
        CREATE,
        "{thing: {'displayName': 'it\\'s', parts: [{partName: 'a'},],},}",
    ),
    "an empty body": (CREATE, ""),
    "update with the body field": (("PATCH", "/v1/things/t1"), '{"displayName": "x"}'),
    "delete with a body": (("DELETE", "/v1/things/t1"), '{"force": true}'),
    "a repeated body field": (("POST", "/v1/things:tag"), '[{"partName": "a"}]'),
    "a client stream": (("POST", "/v1/things:import"), '[{"parent": "a"}, {"thing": {}}]'),
    "an HttpBody request": (("POST", "/v1/things:upload"), '{"bogus": 1}'),
    "an HttpBody body field": (("POST", "/v1/things/t1:attach"), '{"bogus": 1}'),
    "the other binding": (("POST", "/v1/things:search"), '{"name": "n"}'),
}


@pytest.mark.parametrize(("request_line", "body"), VALID.values(), ids=VALID.keys())
def test_valid_bodies_pass(gateway: Gateway, request_line: tuple[str, str], body: str) -> None:
    response = gateway.send(*request_line, body)
    assert response.status_code == PASSED, response.text


UNKNOWN = {
    "top level": (CREATE, '{"parent": "p", "thingy": {}}', "thingy"),
    "nested": (CREATE, '{"thing": {"displayName": "x", "mediaSize": 5}}', "thing.mediaSize"),
    "camel case of a json_name option": (
        CREATE,
        '{"thing": {"customName": "x", "custom_name": 1}}',
        "thing.custom_name",
    ),
    "wrong case": (CREATE, '{"thing": {"DisplayName": "x"}}', "thing.DisplayName"),
    "in an array": (CREATE, '{"thing": {"parts": [{}, {"part": 1}]}}', "thing.parts[1].part"),
    "in nested arrays": (CREATE, '{"thing": {"parts": [[{"x": 1}]]}}', "thing.parts[0][0].x"),
    "in a single object for a repeated field": (
        CREATE,
        '{"thing": {"parts": {"x": 1}}}',
        "thing.parts.x",
    ),
    "in a map value": (
        CREATE,
        '{"thing": {"partsByKey": {"k": {"x": 1}}}}',
        "thing.partsByKey[k].x",
    ),
    "deep in a recursive message": (
        CREATE,
        '{"thing": {"part": {"owner": {"part": {"owner": {"bogus": 1}}}}}}',
        "thing.part.owner.part.owner.bogus",
    ),
    "after a string with braces": (
        CREATE,
        '{"thing": {"displayName": "{\\"a\\": {", "b": 1}}',
        "thing.b",
    ),
    "written with a unicode escape": (CREATE, '{"thing": {"b\\u0061d": 1}}', "thing.bad"),
    "a bare word key": (CREATE, "{thing: {bogus: 1}}", "thing.bogus"),
    "an apostrophed key": (CREATE, "{'thing': {'bo\\'gus': 1}}", "thing.bo'gus"),
    "in the body field": (("PATCH", "/v1/things/t1"), '{"mediaSize": 1}', "thing.mediaSize"),
    "in a repeated body field": (("POST", "/v1/things:tag"), '[{"x": 1}]', "tags[0].x"),
    "in a delete body": (("DELETE", "/v1/things/t1"), '{"forse": true}', "forse"),
    "in a client stream": (("POST", "/v1/things:import"), '[{}, {"x": 1}]', "[1].x"),
    "with a query string": (("POST", "/v1/things:search?x=1"), '{"nam": "n"}', "nam"),
}


@pytest.mark.parametrize(("request_line", "body", "field"), UNKNOWN.values(), ids=UNKNOWN.keys())
def test_unknown_fields_are_400_naming_the_field(
    gateway: Gateway, request_line: tuple[str, str], body: str, field: str
) -> None:
    assert unknown_field(gateway.send(*request_line, body)) == field


def test_a_literal_route_is_checked_against_its_own_method(gateway: Gateway) -> None:
    # Both templates match; the transcoder picks the literal one, and so does the check.
    assert gateway.send("POST", "/v1/shelves/special/things", '{"parent": "p"}').status_code == (
        PASSED
    )
    assert unknown_field(gateway.send("POST", "/v1/shelves/special/things", '{"x": 1}')) == "x"


def test_an_unprintable_key_is_reported_as_valid_json(gateway: Gateway) -> None:
    response = gateway.send("POST", "/v1/shelves/s1/things", b'{"a\\u0000\xff\\"b": 1}')
    assert unknown_field(response) == 'a\x00?"b'
    lone_surrogate = gateway.send("POST", "/v1/shelves/s1/things", '{"x\\ud800": 1}')
    assert unknown_field(lone_surrogate) == "x???"


@pytest.mark.parametrize(
    "body",
    [
        '{"thing": {"displayName": "x"',
        '{"thing": {"displayName" "x"}}',
        '{"thing": {}} trailing',
        '{"thing": {"displayName": "unterminated}}',
        '{"thing": {,}}',
    ],
)
def test_malformed_json_is_400(gateway: Gateway, body: str) -> None:
    response = gateway.send(*CREATE, body)
    assert response.status_code == 400
    assert response.json()["details"][0]["reason"] == "MALFORMED_JSON"


def test_nesting_is_bounded(gateway: Gateway) -> None:
    deep = '{"part": {"owner": ' * 60 + "{}" + "}}" * 60
    response = gateway.send(*CREATE, '{"thing": ' + deep + "}")
    assert response.status_code == 400
    assert response.json()["details"][0]["reason"] == "JSON_TOO_DEEP"
    # Free-form values are skipped without recursion: Envoy answers, whatever the depth.
    hostile = '{"thing": {"extra": {"a": ' + "[" * 200_000 + "]" * 200_000 + "}}}"
    assert gateway.send(*CREATE, hostile).status_code == 400
    assert gateway.send(*CREATE, '{"thing": {"extra": ' + "[" * 500_000).status_code == 400


def test_a_large_body_is_checked_to_its_end(gateway: Gateway) -> None:
    parts = ", ".join(f'{{"partName": "{n:06d}"}}' for n in range(50_000))
    assert gateway.send(*CREATE, '{"thing": {"parts": [' + parts + "]}}").status_code == PASSED
    bad = '{"thing": {"parts": [' + parts + ', {"x": 1}]}}'
    assert unknown_field(gateway.send(*CREATE, bad)) == "thing.parts[50000].x"


def test_grpc_requests_are_not_inspected(gateway: Gateway) -> None:
    response = httpx.post(
        gateway.url + "/v1/shelves/s1/things",
        content=b'{"bogus": 1}',
        headers={"content-type": "application/grpc"},
        timeout=TIMEOUT_S,
    )
    assert "UNKNOWN_FIELD" not in response.text


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], None, True),
        ([], "false", False),
        (["--strict-json"], "false", True),
        (["--no-strict-json"], None, False),
    ],
)
def test_the_cli_renders_the_setting(
    probe_descriptor_set: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: str | None,
    expected: bool,
) -> None:
    if env is None:
        monkeypatch.delenv(strict_json.SETTING, raising=False)
    else:
        monkeypatch.setenv(strict_json.SETTING, env)
    out = tmp_path / "envoy.json"
    code = envoy_config.main(
        [
            *("--descriptor-set", str(probe_descriptor_set), "--out", str(out)),
            *("--listen-port", "8080", "--admin-port", "9901"),
            *("--upstream", "probe=127.0.0.1:50051", "--reflection", "127.0.0.1:50060"),
            *args,
        ]
    )
    assert code == 0
    names = [f["name"] for f in http_filters(json.loads(out.read_text()))]
    assert (strict_json.FILTER_NAME in names) is expected
