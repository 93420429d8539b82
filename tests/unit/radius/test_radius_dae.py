"""RFC 5176 Disconnect-Requests: the listener's decisions, without sockets."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.radius import (
    AUTHENTICATOR_LENGTH,
    HEADER_LENGTH,
    AttributeValue,
    Code,
    accounting_request_authenticator,
    decode_packet,
    encode_packet,
    message_authenticator,
    response_authenticator,
    verify_answer,
)
from gateway.radius_dae import (
    DaeClient,
    DaeConfig,
    DaeServer,
    DisconnectRequest,
    ErrorCause,
    parse_dae_config,
)
from mpa_ike.errors import ConfigError
from mpa_ike.node.config import Endpoint

SECRET = b"dae-secret"
CLIENT = ("198.51.100.10", 40000)


def request(
    items: list[tuple[str, AttributeValue]],
    *,
    code: Code = Code.DISCONNECT_REQUEST,
    identifier: int = 7,
    secret: bytes = SECRET,
    with_ma: bool = False,
) -> bytes:
    """A request signed as radclient signs it (RFC 5176 §3.5)."""
    zero = bytes(AUTHENTICATOR_LENGTH)
    if with_ma:
        items = [("Message-Authenticator", zero), *items]
    raw = encode_packet(code, identifier, zero, items)
    if with_ma:
        digest = message_authenticator(raw, secret, zero)
        raw = raw[: HEADER_LENGTH + 2] + digest + raw[HEADER_LENGTH + 2 + 16 :]
    return raw[:4] + accounting_request_authenticator(raw, secret) + raw[HEADER_LENGTH:]


class Sessions:
    def __init__(self, known: dict[str, str]) -> None:
        self.known = known
        self.asked: list[DisconnectRequest] = []

    def __call__(self, request: DisconnectRequest) -> int:
        self.asked.append(request)
        matches = all(self.known.get(k) == v for k, v in request.identification.items())
        return 1 if matches else 0


def server(sessions: Sessions) -> DaeServer:
    config = DaeConfig(
        Endpoint(ip_address("198.51.100.1")), (DaeClient(ip_address(CLIENT[0]), SECRET),)
    )
    return DaeServer(config, sessions, nas_identifier="gw.test", clock=lambda: 0.0)


def checked_answer(answer: bytes | None, sent: bytes, *, require_ma: bool = False) -> bytes:
    assert answer is not None
    assert verify_answer(answer, sent[4:HEADER_LENGTH], SECRET, require_ma=require_ma) is None
    assert answer[1] == sent[1]
    return answer


@pytest.mark.parametrize("with_ma", [False, True])
def test_disconnect_of_a_known_user_is_acknowledged(with_ma: bool) -> None:
    sessions = Sessions({"User-Name": "alice", "Framed-IP-Address": "10.9.0.7"})
    dae = server(sessions)
    sent = request([("User-Name", "alice"), ("Framed-IP-Address", "10.9.0.7")], with_ma=with_ma)
    answer = checked_answer(dae.answer(sent, CLIENT), sent, require_ma=with_ma)
    assert answer[0] == Code.DISCONNECT_ACK
    assert sessions.asked == [
        DisconnectRequest({"User-Name": "alice", "Framed-IP-Address": "10.9.0.7"})
    ]
    assert dae.counters["disconnect_acks"] == 1


def test_no_matching_session_is_nak_503() -> None:
    dae = server(Sessions({"User-Name": "alice"}))
    sent = request([("User-Name", "bob")])
    answer = checked_answer(dae.answer(sent, CLIENT), sent)
    assert answer[0] == Code.DISCONNECT_NAK
    assert decode_packet(answer)["Error-Cause"] == [ErrorCause.SESSION_CONTEXT_NOT_FOUND]


@pytest.mark.parametrize(
    ("items", "cause"),
    [
        ([], ErrorCause.MISSING_ATTRIBUTE),
        ([("User-Name", "alice"), ("NAS-Identifier", "other")], 403),
    ],
)
def test_requests_naming_nothing_or_another_nas(
    items: list[tuple[str, AttributeValue]], cause: int
) -> None:
    sessions = Sessions({"User-Name": "alice"})
    dae = server(sessions)
    sent = request(items)
    answer = checked_answer(dae.answer(sent, CLIENT), sent)
    assert answer[0] == Code.DISCONNECT_NAK
    assert decode_packet(answer)["Error-Cause"] == [cause]
    assert sessions.asked == []


def test_coa_is_refused() -> None:
    dae = server(Sessions({}))
    sent = request([("User-Name", "alice")], code=Code.COA_REQUEST)
    answer = checked_answer(dae.answer(sent, CLIENT), sent)
    assert answer[0] == Code.COA_NAK
    assert decode_packet(answer)["Error-Cause"] == [ErrorCause.UNSUPPORTED_SERVICE]


def test_unknown_clients_and_bad_authenticators_are_dropped_and_counted() -> None:
    sessions = Sessions({"User-Name": "alice"})
    dae = server(sessions)
    good = request([("User-Name", "alice")])
    assert dae.answer(good, ("198.51.100.11", 1)) is None
    assert dae.answer(request([("User-Name", "alice")], secret=b"wrong"), CLIENT) is None
    forged_ma = bytearray(request([("User-Name", "alice")], with_ma=True))
    forged_ma[HEADER_LENGTH + 2] ^= 1  # then the Request Authenticator is recomputed
    raw = bytes(forged_ma)
    raw = raw[:4] + accounting_request_authenticator(raw, SECRET) + raw[HEADER_LENGTH:]
    assert dae.answer(raw, CLIENT) is None
    assert dae.answer(b"\x28\x01\x00", CLIENT) is None
    assert dae.counters["dropped_unknown_client"] == 1
    assert dae.counters["dropped_bad_authenticator"] == 2
    assert dae.counters["dropped_malformed"] == 1
    assert sessions.asked == []


def test_a_retransmission_gets_the_same_answer() -> None:
    sessions = Sessions({"User-Name": "alice"})
    dae = server(sessions)
    sent = request([("User-Name", "alice")])
    first = dae.answer(sent, CLIENT)
    sessions.known = {}  # the session is gone once disconnected
    assert dae.answer(sent, CLIENT) == first
    assert len(sessions.asked) == 1 and dae.counters["duplicates"] == 1


def test_answer_authenticator_is_rfc_2865s() -> None:
    dae = server(Sessions({"User-Name": "alice"}))
    sent = request([("User-Name", "alice")])
    answer = dae.answer(sent, CLIENT)
    assert answer is not None
    expected = response_authenticator(answer, sent[4:HEADER_LENGTH], SECRET)
    assert answer[4:HEADER_LENGTH] == expected


# --------------------------------------------------------------------------- configuration


def test_dae_config() -> None:
    config = parse_dae_config(
        {"listen": "192.0.2.2", "clients": [{"address": "192.0.2.9", "secret": "s"}]}
    )
    assert config.port == 3799
    assert config.clients == (DaeClient(ip_address("192.0.2.9"), b"s"),)
    assert parse_dae_config({"listen": "[::1]:1700", "clients": [config_client()]}).port == 1700


def config_client() -> dict[str, str]:
    return {"address": "::1", "secret": "s"}


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ({"clients": [{"address": "::1", "secret": "s"}]}, "dae.listen"),
        ({"listen": "::1"}, "dae.clients"),
        ({"listen": "::1", "clients": [{"address": "::1"}]}, "dae.clients[0].secret"),
        ({"listen": "::1", "clients": [{"address": "x", "secret": "s"}]}, "dae.clients[0].address"),
        ({"listen": "::1", "clients": [config_client()], "port": 1}, "dae.port"),
    ],
)
def test_dae_errors_name_the_key(value: object, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_dae_config(value)
    assert str(caught.value).startswith(key)


GATEWAY = {
    "listen": ["192.0.2.2"],
    "id": "gw.test",
    "psk": "0x" + "ab" * 32,
    "pool": ["10.3.0.0/24"],
}


def test_gateway_with_radius_and_dae(tmp_path: Path) -> None:
    data = {
        **GATEWAY,
        "eap": {
            "method": "radius",
            "radius": {"servers": [{"address": "10.1.0.10", "secret": "s"}], "accounting": True},
        },
        "dae": {"listen": "10.1.0.1:3799", "clients": [{"address": "10.1.0.10", "secret": "d"}]},
    }
    config = parse_config(data, tmp_path)
    assert config.eap.method == "radius" and not config.eap.users
    assert config.eap.radius is not None and config.eap.radius.accounting
    assert config.dae is not None and config.dae.port == 3799


@pytest.mark.parametrize(
    ("eap", "message"),
    [
        ({"method": "radius"}, "eap.radius: required"),
        ({"method": "radius", "radius": {"servers": []}}, "eap.radius.servers: must not be empty"),
        (
            {"method": "md5", "users": {"a": "b"}, "radius": {}},
            "eap.radius: only with method: radius",
        ),
        (
            {
                "method": "radius",
                "radius": {"servers": [{"address": "::1", "secret": "s"}]},
                "users": {"a": "b"},
            },
            "eap.users: unknown key",
        ),
    ],
)
def test_gateway_radius_errors(eap: object, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({**GATEWAY, "eap": eap}, tmp_path)
    assert str(caught.value).startswith(message)
