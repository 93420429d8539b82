"""Property-based fuzzing of EapPeer.handle and EapServer.handle.

Whatever arrives, ``handle`` returns None or one well-formed EAP packet of the
right direction, never raises, and the documented outcomes hold: an MSK only
with SUCCESS, and no SUCCESS for the server without the right password.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from mpa_ike.eap.packet import EapCode, EapType, parse_packet
from mpa_ike.eap.peer import EapPeer
from mpa_ike.eap.result import EapResult
from mpa_ike.eap.server import EapServer

USERS = {b"alice": "pw"}
METHODS = st.sampled_from([EapType.MD5_CHALLENGE, EapType.MSCHAPV2])


def seeded_random(seed: int) -> Callable[[int], bytes]:
    state = [seed]

    def draw(n: int) -> bytes:
        out = bytes((state[0] * 31 + i) % 256 for i in range(n))
        state[0] += 1
        return out

    return draw


def check_peer(peer: EapPeer, reply: bytes | None) -> None:
    if reply is not None:
        assert parse_packet(reply).code == EapCode.RESPONSE
    if peer.msk is not None:
        assert peer.result == EapResult.SUCCESS


def check_server(server: EapServer, reply: bytes | None) -> None:
    if reply is not None:
        assert parse_packet(reply).code != EapCode.RESPONSE
    if server.msk is not None:
        assert server.result == EapResult.SUCCESS


def mutate(message: bytes, how: int, where: int, junk: bytes) -> bytes:
    if how == 0 or not message:
        return message
    index = where % len(message)
    if how == 1:
        return message[:index]
    if how == 2:
        return message[:index] + bytes([message[index] ^ 0x5A]) + message[index + 1 :]
    return junk


@given(st.lists(st.binary(max_size=70), max_size=6), METHODS)
def test_peer_survives_any_bytes(messages: list[bytes], method: EapType) -> None:
    peer = EapPeer("alice", "pw", methods=[method], random=seeded_random(1))
    for message in messages:
        check_peer(peer, peer.handle(message))


@given(st.lists(st.binary(max_size=70), max_size=6), METHODS, st.booleans())
def test_server_survives_any_bytes(messages: list[bytes], method: EapType, ask: bool) -> None:
    server = EapServer(method, USERS.get, seeded_random(2), ask_identity=ask, identity=b"alice")
    server.start()
    for message in messages:
        check_server(server, server.handle(message))
    assert server.result != EapResult.SUCCESS


@settings(max_examples=300)
@given(
    METHODS,
    st.sampled_from(["pw", "wrong"]),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 200), st.binary(max_size=30)), max_size=8),
)
def test_mutated_conversations(
    method: EapType, password: str, mutations: list[tuple[int, int, bytes]]
) -> None:
    server = EapServer((method,), USERS.get, seeded_random(3))
    peer = EapPeer("alice", password, random=seeded_random(4))
    to_peer: bytes | None = server.start()
    steps = iter(mutations + [(0, 0, b"")] * 8)
    for how, where, junk in steps:
        if to_peer is None:
            break
        to_server = peer.handle(mutate(to_peer, how, where, junk))
        check_peer(peer, to_server)
        if to_server is None:
            break
        how, where, junk = next(steps)
        to_peer = server.handle(mutate(to_server, how, where, junk))
        check_server(server, to_peer)
    if password != "pw":
        assert server.result != EapResult.SUCCESS
        assert peer.msk is None
    if server.result == EapResult.SUCCESS and peer.result == EapResult.SUCCESS:
        assert server.msk == peer.msk
