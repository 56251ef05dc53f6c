"""The interceptor's optional-credential rule and the client address the services
trust: a call without a credential runs with no principal, a call with one is checked
as always; Envoy's own address headers win over anything a client writes."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from services.shared.auth import (
    CredentialOptional,
    CredentialVerifier,
    JwtCodec,
    Permission,
    Principal,
    PrincipalType,
    Scope,
)
from services.shared.client_address import client_address, client_ip
from services.shared.context import principal_var
from services.shared.errors import PermissionDenied, Unauthenticated
from services.shared.interceptors import RequestInterceptor

METHOD = "/podmesh.attribution.v1.AttributionService/TrackSiteEvents"
TENANT = uuid.uuid4()
KEYS = {
    "pk_ingest": Principal(PrincipalType.API_KEY, TENANT, "k1", scopes=frozenset({Scope.INGEST})),
    "pk_read": Principal(PrincipalType.API_KEY, TENANT, "k2", scopes=frozenset({Scope.READ})),
}


class _Keys:
    async def verify_api_key(self, secret: str) -> Principal | None:
        return KEYS.get(secret)

    async def verify_user_token(self, token: str, claims: Principal) -> Principal | None:
        return None


class _Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def send_initial_metadata(self, metadata: Any) -> None:
        return None


def interceptor() -> RequestInterceptor:
    verifier = CredentialVerifier("", JwtCodec("x" * 32, 60), _Keys())
    return RequestInterceptor(
        "attribution", {METHOD: CredentialOptional(Permission.INGEST)}, verifier, {}
    )


async def enter(*metadata: tuple[str, str]) -> Principal | None:
    principal_var.set(None)
    await interceptor()._enter(METHOD, _Context(metadata))  # type: ignore[arg-type]
    return principal_var.get()


async def test_no_credential_means_no_principal() -> None:
    assert await enter(("origin", "https://shop.example")) is None
    # A scheme other than Bearer carries no credential either.
    assert await enter(("authorization", "Basic dXNlcjpwYXNz")) is None


async def test_a_credential_that_is_sent_is_checked() -> None:
    principal = await enter(("authorization", "Bearer pk_ingest"))
    assert principal is not None
    assert principal.subject_id == "k1"
    with pytest.raises(PermissionDenied):
        await enter(("authorization", "Bearer pk_read"))
    with pytest.raises(Unauthenticated):
        await enter(("x-api-key", "pk_unknown"))


async def test_streams_recheck_the_same_way() -> None:
    check = interceptor()
    await check.recheck(METHOD, _Context(()))  # type: ignore[arg-type]
    with pytest.raises(PermissionDenied):
        await check.recheck(METHOD, _Context((("authorization", "Bearer pk_read"),)))  # type: ignore[arg-type]
    assert grpc.StatusCode.PERMISSION_DENIED is PermissionDenied.code


@pytest.mark.parametrize(
    ("metadata", "peer", "expected"),
    [
        # Envoy's trusted client address wins: for a loopback client it is the peer,
        # while x-forwarded-for ends with Envoy's own host address.
        (
            (
                ("x-forwarded-for", "198.51.100.7,192.0.2.2"),
                ("x-envoy-external-address", "127.0.0.1"),
            ),
            "ipv4:127.0.0.1:5000",
            "127.0.0.1",
        ),
        ((("x-forwarded-for", "198.51.100.7, 203.0.113.1"),), "ipv4:127.0.0.1:1", "203.0.113.1"),
        ((), "ipv6:[2001:db8::1]:443", "2001:db8::1"),
    ],
)
def test_the_client_ip_is_the_one_envoy_trusts(
    metadata: tuple[tuple[str, str], ...], peer: str, expected: str
) -> None:
    assert client_ip(metadata, peer) == expected


def test_the_client_address_normalises_the_same_ip() -> None:
    assert client_address((("x-envoy-external-address", "2001:db8:1:2:3::9"),), "") == (
        "2001:db8:1:2::/64"
    )
