"""The rendered bootstrap's exposure: where it listens, which origins it trusts, what it
forwards, and how it answers errors itself. Through a running Envoy, see
tests/integration/test_gateway_trust_json.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack import protogen
from gateway import envoy_config
from gateway.envoy_config import (
    ORIGINAL_CONTENT_TYPE_HEADER,
    load_descriptor_set,
    parse_cors_origins,
    podmesh_services,
    render_envoy_config,
)
from tests.gateway.test_envoy_config import running, wait_for

ENVOY = Path(sys.executable).parent / "envoy"


@pytest.fixture(scope="module")
def descriptor_set() -> Path:
    if not protogen.DESCRIPTOR_SET.exists():
        protogen.generate()
    return protogen.DESCRIPTOR_SET


def backends(descriptor_set: Path) -> list[str]:
    return sorted({s.backend for s in podmesh_services(load_descriptor_set(descriptor_set))})


def render(descriptor_set: Path, **options: Any) -> dict[str, Any]:
    return render_envoy_config(
        descriptor_set,
        listen_host="127.0.0.1",
        listen_port=8080,
        admin_port=9901,
        upstreams={backend: [("127.0.0.1", 50051)] for backend in backends(descriptor_set)},
        reflection_upstream=("127.0.0.1", 50060),
        **options,
    )


def connection_manager(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def cli(descriptor_set: Path, out: Path, *extra: str) -> dict[str, Any]:
    args = [
        *("--descriptor-set", str(descriptor_set), "--out", str(out)),
        *("--listen-port", "8080", "--admin-port", "9901", "--reflection", "127.0.0.1:50060"),
    ]
    for backend in backends(descriptor_set):
        args += ["--upstream", f"{backend}=127.0.0.1:50051"]
    assert envoy_config.main([*args, *extra]) == 0
    config: dict[str, Any] = json.loads(out.read_text())
    return config


def listen_address(config: dict[str, Any]) -> str:
    return str(config["static_resources"]["listeners"][0]["address"]["socket_address"]["address"])


def cors_origins(config: dict[str, Any]) -> list[str]:
    policy = connection_manager(config)["route_config"]["virtual_hosts"][0][
        "typed_per_filter_config"
    ]["envoy.filters.http.cors"]
    return [matcher["exact"] for matcher in policy["allow_origin_string_match"]]


def test_the_cli_binds_loopback_and_trusts_no_origin_unless_told(
    descriptor_set: Path, tmp_path: Path
) -> None:
    default = cli(descriptor_set, tmp_path / "default.json")
    assert listen_address(default) == "127.0.0.1"
    assert cors_origins(default) == []
    told = cli(
        descriptor_set,
        tmp_path / "told.json",
        *("--listen-host", "0.0.0.0", "--cors-origin", "https://app.example.com"),
    )
    assert listen_address(told) == "0.0.0.0"
    assert cors_origins(told) == ["https://app.example.com"]


def test_cors_origins_are_exact_origins() -> None:
    assert parse_cors_origins("") == ()
    assert parse_cors_origins(" https://a.example.com ,http://localhost:5173,") == (
        "https://a.example.com",
        "http://localhost:5173",
    )
    assert parse_cors_origins("http://[::1]:8000") == ("http://[::1]:8000",)
    bad_origins = (
        *("*", "null", "https://*.example.com", "https://a.example.com/", "a.example.com"),
        *("HTTPS://A.EXAMPLE.COM", "ftp://a.example.com", "https://a.example.com:8443/x"),
    )
    for bad in bad_origins:
        with pytest.raises(ValueError, match="exact origin"):
            parse_cors_origins(bad)


def test_render_refuses_a_wildcard_origin(descriptor_set: Path) -> None:
    with pytest.raises(ValueError, match="exact origin"):
        render(descriptor_set, cors_allowed_origins=("*",))


def test_the_rest_url_never_travels_upstream(descriptor_set: Path) -> None:
    hcm = connection_manager(render(descriptor_set))
    assert "x-envoy-original-path" in hcm["route_config"]["request_headers_to_remove"]
    assert hcm["max_request_headers_kb"] == envoy_config.DEFAULT_MAX_REQUEST_HEADERS_KB


def test_only_json_clients_get_json_local_replies(descriptor_set: Path) -> None:
    mappers = connection_manager(render(descriptor_set))["local_reply_config"]["mappers"]
    assert "body_format" not in connection_manager(render(descriptor_set))["local_reply_config"]
    json_statuses = []
    for mapper in mappers:
        content_type, *_, status = mapper["filter"]["and_filter"]["filters"]
        header = content_type["header_filter"]["header"]
        assert header["name"] == ORIGINAL_CONTENT_TYPE_HEADER
        assert header["string_match"] == {"prefix": "application/grpc"}
        if "body_format_override" in mapper:
            assert header["invert_match"] is True
            body = mapper["body_format_override"]["json_format"]
            assert set(body) == {"code", "message", "details"}
            assert body["details"][0]["domain"] == "podmesh.dev"
            json_statuses.append(status["status_code_filter"]["comparison"]["value"])
        else:
            assert "invert_match" not in header
    codes = [value["default_value"] for value in json_statuses]
    assert codes == [400, 404, 408, 413, 429, 431, 502, 503, 504, 400]
    # The last one catches every other error status.
    assert (
        mappers[-1]["filter"]["and_filter"]["filters"][-1]["status_code_filter"]["comparison"]["op"]
        == "GE"
    )


def test_envoy_accepts_the_hardened_config(descriptor_set: Path, tmp_path: Path) -> None:
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(render(descriptor_set, cors_allowed_origins=("https://a.test",))))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", path, "--disable-hot-restart", "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


LUA_STATUS = b'{"code":3,"message":"unknown field","details":[]}'


def test_a_filters_own_json_reply_is_kept(descriptor_set: Path, tmp_path: Path) -> None:
    """A filter that answers JSON itself (say, a Lua check of the body) keeps its body;
    Envoy's own plain-text errors next to it still become JSON."""
    config = render(descriptor_set)
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = 0
    config["admin"]["address"]["socket_address"]["port_value"] = 0
    lua = f"""
function envoy_on_request(handle)
  if handle:headers():get(":path") == "/api/v1/answeredByLua" then
    handle:respond({{[":status"] = "400", ["content-type"] = "application/json"}},
                   '{LUA_STATUS.decode()}')
  end
end
"""
    filters = connection_manager(config)["http_filters"]
    transcoder = [f["name"] for f in filters].index("envoy.filters.http.grpc_json_transcoder")
    filters.insert(
        transcoder,
        {
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": lua},
            },
        },
    )
    config_path = tmp_path / "envoy.json"
    config_path.write_text(json.dumps(config))
    admin_address = tmp_path / "admin.address"
    args: list[str | Path] = [
        ENVOY,
        *("-c", config_path, "--disable-hot-restart", "--concurrency", "1"),
        *("--admin-address-path", admin_address, "--log-level", "warn"),
    ]
    log = tmp_path / "envoy.log"
    with running(args, log) as envoy, httpx.Client(timeout=5) as http:

        def listener_url() -> str | None:
            text = admin_address.read_text().strip() if admin_address.exists() else ""
            if not text:
                return None
            try:
                listeners = http.get(f"http://{text}/listeners", params={"format": "json"})
            except httpx.TransportError:
                return None
            port = listeners.json()["listener_statuses"][0]["local_address"]["socket_address"]
            return f"http://127.0.0.1:{port['port_value']}" if port.get("port_value") else None

        url = wait_for(listener_url, what="envoy listener", process=envoy, log=log)
        answered = http.get(f"{url}/api/v1/answeredByLua")
        assert answered.status_code == 400
        assert answered.content == LUA_STATUS
        unknown = http.get(f"{url}/api/v1/nothingHere")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == "application/json"
        assert unknown.json()["code"] == 5
