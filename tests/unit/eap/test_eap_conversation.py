"""Peer and server back to back, with deterministic randomness."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mpa_ike.eap.md5 import Md5Value, md5_response
from mpa_ike.eap.mschapv2 import (
    MsChapChallenge,
    MsChapMessage,
    OpCode,
    authenticator_response,
    derive_msk,
    format_authenticator_response,
    generate_nt_response,
    hash_nt_password_hash,
    nt_password_hash,
    parse_mschapv2,
)
from mpa_ike.eap.packet import EapCode, EapType, parse_packet, request, response
from mpa_ike.eap.peer import EapPeer
from mpa_ike.eap.result import EapResult
from mpa_ike.eap.server import EapServer
from mpa_ike.errors import ConfigError, LocalProtocolError

USERS = {b"alice": "correct horse", b"CORP\\bob": "hunter2"}
MD5 = EapType.MD5_CHALLENGE
MSCHAPV2 = EapType.MSCHAPV2


def counter_random(start: int = 0x40) -> Callable[[int], bytes]:
    """Deterministic injected randomness: a running byte counter."""
    state = [start]

    def draw(n: int) -> bytes:
        out = bytes((state[0] + i) % 256 for i in range(n))
        state[0] = (state[0] + n) % 256
        return out

    return draw


def make_server(
    methods: EapType | tuple[EapType, ...], ask_identity: bool = True, identity: bytes | None = None
) -> EapServer:
    return EapServer(
        methods, USERS.get, counter_random(), ask_identity=ask_identity, identity=identity
    )


def run(server: EapServer, peer: EapPeer, limit: int = 12) -> list[bytes]:
    """Exchange messages until one side stops answering; return the server's messages."""
    sent = [server.start()]
    for _ in range(limit):
        reply = peer.handle(sent[-1])
        if reply is None:
            return sent
        answer = server.handle(reply)
        if answer is None:
            return sent
        sent.append(answer)
    raise AssertionError("conversation did not end")


def code_of(message: bytes) -> EapCode:
    return parse_packet(message).code


@pytest.mark.parametrize("method", [MD5, MSCHAPV2])
def test_right_password_succeeds(method: EapType) -> None:
    server = make_server(method)
    peer = EapPeer("alice", "correct horse", random=counter_random(0x90))
    sent = run(server, peer)
    assert code_of(sent[-1]) == EapCode.SUCCESS
    assert server.result == peer.result == EapResult.SUCCESS
    assert server.identity == b"alice"
    assert server.method == peer.method == method
    if method == MSCHAPV2:
        assert server.msk is not None and len(server.msk) == 64
        assert server.msk == peer.msk
    else:
        assert server.msk is None and peer.msk is None


def test_mschapv2_message_sequence() -> None:
    """Identity, Challenge, Success Request + ack, then EAP-Success (draft-kamath §2)."""
    server = make_server(MSCHAPV2)
    peer = EapPeer("alice", "correct horse", random=counter_random(0x90))
    sent = [parse_packet(m) for m in run(server, peer)]
    assert [(p.code, p.type) for p in sent] == [
        (EapCode.REQUEST, EapType.IDENTITY),
        (EapCode.REQUEST, MSCHAPV2),
        (EapCode.REQUEST, MSCHAPV2),
        (EapCode.SUCCESS, None),
    ]
    identifiers = [p.identifier for p in sent]
    assert identifiers[1] == (identifiers[0] + 1) % 256
    assert identifiers[2] == (identifiers[1] + 1) % 256
    assert identifiers[3] == identifiers[2]  # §4.2: Success echoes the last Response
    challenge = parse_mschapv2(sent[1].data, from_peer=False)
    assert isinstance(challenge, MsChapChallenge) and challenge.ms_id == sent[1].identifier


@pytest.mark.parametrize("method", [MD5, MSCHAPV2])
def test_wrong_password_fails_without_msk(method: EapType) -> None:
    server = make_server(method)
    peer = EapPeer("alice", "wrong", random=counter_random(0x90))
    sent = run(server, peer)
    assert code_of(sent[-1]) == EapCode.FAILURE
    assert server.result == peer.result == EapResult.FAILURE
    assert server.msk is None and peer.msk is None


def test_mschapv2_failure_request_then_ack_then_failure() -> None:
    server = make_server(MSCHAPV2)
    peer = EapPeer("alice", "wrong", random=counter_random(0x90))
    sent = [parse_packet(m) for m in run(server, peer)]
    assert [p.code for p in sent] == [EapCode.REQUEST] * 3 + [EapCode.FAILURE]
    message = parse_mschapv2(sent[2].data, from_peer=False)
    assert isinstance(message, MsChapMessage) and message.opcode == OpCode.FAILURE
    fields = message.fields()
    assert fields["E"] == "691" and fields["R"] == "0" and len(fields["C"]) == 32


@pytest.mark.parametrize("method", [MD5, MSCHAPV2])
def test_unknown_user_fails(method: EapType) -> None:
    server = make_server(method)
    peer = EapPeer("mallory", "correct horse", random=counter_random(0x90))
    assert code_of(run(server, peer)[-1]) == EapCode.FAILURE
    assert server.result == peer.result == EapResult.FAILURE


def test_mschapv2_domain_user() -> None:
    """RFC 2759 §4: the hash uses the user name without its domain."""
    server = make_server(MSCHAPV2)
    peer = EapPeer("CORP\\bob", "hunter2", random=counter_random(0x90))
    run(server, peer)
    assert server.result == peer.result == EapResult.SUCCESS
    assert server.identity == b"CORP\\bob"


@pytest.mark.parametrize("method", [MD5, MSCHAPV2])
def test_without_eap_identity_uses_ike_identity(method: EapType) -> None:
    server = make_server(method, ask_identity=False, identity=b"alice")
    peer = EapPeer("alice", "correct horse", random=counter_random(0x90))
    first = parse_packet(server.start())
    assert first.type == method
    server = make_server(method, ask_identity=False, identity=b"alice")
    run(server, peer)
    assert server.result == peer.result == EapResult.SUCCESS


def test_empty_eap_identity_falls_back_to_ike_identity() -> None:
    server = make_server(MD5, identity=b"alice")
    peer = EapPeer(b"", "correct horse")
    run(server, peer)
    assert server.identity == b"alice" and server.result == EapResult.SUCCESS


def test_empty_identity_without_ike_identity_fails() -> None:
    server = make_server(MD5)
    assert code_of(run(server, EapPeer(b"", "x"))[-1]) == EapCode.FAILURE


def test_nak_switches_to_the_peers_method() -> None:
    server = make_server((MSCHAPV2, MD5))
    peer = EapPeer("alice", "correct horse", methods=[MD5])
    sent = [parse_packet(m) for m in run(server, peer)]
    assert [p.type for p in sent] == [EapType.IDENTITY, MSCHAPV2, MD5, None]
    assert server.result == peer.result == EapResult.SUCCESS
    assert server.method == peer.method == MD5


def test_nak_without_common_method_fails() -> None:
    server = make_server(MSCHAPV2)
    peer = EapPeer("alice", "correct horse", methods=[MD5])
    sent = run(server, peer)
    assert code_of(sent[-1]) == EapCode.FAILURE
    assert server.result == peer.result == EapResult.FAILURE


def test_nak_after_the_first_response_fails() -> None:
    """RFC 3748 §5.3.1: Nak only instead of the first Response of a method."""
    server = make_server(MSCHAPV2)
    peer = EapPeer("alice", "correct horse", random=counter_random(0x90))
    challenge = server.handle(peer.handle(server.start()) or b"")
    result_request = parse_packet(server.handle(peer.handle(challenge or b"") or b"") or b"")
    nak = response(result_request.identifier, EapType.NAK, bytes([MD5])).to_bytes()
    assert code_of(server.handle(nak) or b"") == EapCode.FAILURE


def test_nak_to_identity_fails() -> None:
    server = make_server(MD5)
    identity_request = parse_packet(server.start())
    nak = response(identity_request.identifier, EapType.NAK, bytes([MD5])).to_bytes()
    assert code_of(server.handle(nak) or b"") == EapCode.FAILURE


def test_peer_naks_unsupported_method_with_its_list() -> None:
    peer = EapPeer("alice", "pw", methods=[MSCHAPV2, MD5])
    reply = parse_packet(peer.handle(request(4, EapType.GTC, b"prompt").to_bytes()) or b"")
    assert (reply.type, reply.data) == (EapType.NAK, bytes([MSCHAPV2, MD5]))


def test_peer_duplicate_request_gets_stored_response() -> None:
    peer = EapPeer("alice", "correct horse", random=counter_random(0x90))
    challenge = request(9, MSCHAPV2, MsChapChallenge(9, bytes(16), b"gw").to_bytes()).to_bytes()
    first = peer.handle(challenge)
    assert first is not None
    assert peer.handle(challenge) == first  # no new peer challenge drawn


def test_peer_treats_reused_identifier_with_new_content_as_new_request() -> None:
    """strongSwan may reuse an Identifier for the next method's first Request."""
    peer = EapPeer("alice", "correct horse", methods=[MD5])
    peer.handle(request(9, MSCHAPV2, MsChapChallenge(9, bytes(16), b"gw").to_bytes()).to_bytes())
    reply = peer.handle(request(9, MD5, Md5Value(bytes(16)).to_bytes()).to_bytes())
    assert reply is not None and parse_packet(reply).type == MD5


def test_server_ignores_stale_and_foreign_messages() -> None:
    server = make_server(MD5)
    first = parse_packet(server.start())
    stale = response((first.identifier + 1) % 256, EapType.IDENTITY, b"alice").to_bytes()
    assert server.handle(stale) is None
    assert server.handle(request(first.identifier, EapType.IDENTITY).to_bytes()) is None
    assert server.handle(b"\x02") is None
    assert server.result == EapResult.PENDING


def test_server_wrong_type_fails() -> None:
    server = make_server(MD5)
    first = parse_packet(server.start())
    wrong = response(first.identifier, MD5, Md5Value(bytes(16)).to_bytes()).to_bytes()
    assert code_of(server.handle(wrong) or b"") == EapCode.FAILURE


def test_peer_rejects_forged_authenticator_response() -> None:
    peer = EapPeer("alice", "correct horse", random=counter_random(0x90))
    peer.handle(request(1, MSCHAPV2, MsChapChallenge(1, bytes(16), b"gw").to_bytes()).to_bytes())
    forged = MsChapMessage(OpCode.SUCCESS, 1, b"S=" + b"00" * 20 + b" M=hi").to_bytes()
    assert peer.handle(request(2, MSCHAPV2, forged).to_bytes()) is None
    assert peer.result == EapResult.FAILURE and peer.msk is None
    assert peer.handle(bytes.fromhex("03020004")) is None
    assert peer.result == EapResult.FAILURE


def test_peer_refuses_success_before_method_end() -> None:
    peer = EapPeer("alice", "pw")
    peer.handle(request(1, EapType.IDENTITY).to_bytes())
    peer.handle(bytes.fromhex("03010004"))
    assert peer.result == EapResult.FAILURE and peer.msk is None


def test_peer_answers_notification() -> None:
    peer = EapPeer("alice", "pw")
    reply = peer.handle(request(1, EapType.NOTIFICATION, b"hello").to_bytes())
    assert reply == response(1, EapType.NOTIFICATION).to_bytes()


def test_md5_peer_known_answer() -> None:
    peer = EapPeer("alice", "correct horse")
    challenge = bytes(range(16))
    reply = parse_packet(
        peer.handle(request(0x33, MD5, Md5Value(challenge).to_bytes()).to_bytes()) or b""
    )
    assert reply.data == b"\x10" + md5_response(0x33, b"correct horse", challenge)


def test_server_accepts_strongswan_style_peer() -> None:
    """A peer answering like strongSwan: MD5 value without Name; 6-octet Success ack."""
    server = make_server(MSCHAPV2, ask_identity=False, identity=b"alice")
    challenge_packet = parse_packet(server.start())
    challenge = parse_mschapv2(challenge_packet.data, from_peer=False)
    assert isinstance(challenge, MsChapChallenge)
    peer_challenge = b"\x11" * 16
    nt = generate_nt_response(challenge.challenge, peer_challenge, b"alice", "correct horse")
    value = peer_challenge + bytes(8) + nt + b"\x00"
    body = bytes([OpCode.RESPONSE, challenge.ms_id]) + (4 + 1 + 49 + 5).to_bytes(2, "big")
    body += b"\x31" + value + b"alice"
    reply = response(challenge_packet.identifier, MSCHAPV2, body).to_bytes()
    success_request = parse_packet(server.handle(reply) or b"")
    ack = bytes([2, success_request.identifier, 0, 6, MSCHAPV2, OpCode.SUCCESS])
    assert parse_packet(server.handle(ack) or b"").code == EapCode.SUCCESS
    hash_hash = hash_nt_password_hash(nt_password_hash("correct horse"))
    assert server.msk == derive_msk(hash_hash, nt)


def test_peer_accepts_strongswan_style_success_request() -> None:
    """strongSwan's Success Request text ends in a NUL and uses MS-CHAPv2-ID = EAP id."""
    server_challenge = b"\x22" * 16
    peer = EapPeer("alice", "correct horse", random=counter_random(0x90))
    peer.handle(
        request(
            0x51, MSCHAPV2, MsChapChallenge(0x51, server_challenge, b"strongSwan").to_bytes()
        ).to_bytes()
    )
    peer_challenge = counter_random(0x90)(16)
    nt = generate_nt_response(server_challenge, peer_challenge, b"alice", "correct horse")
    auth = authenticator_response("correct horse", nt, peer_challenge, server_challenge, b"alice")
    text = format_authenticator_response(auth).encode() + b" M=Welcome2strongSwan\x00"
    ack = peer.handle(
        request(0x52, MSCHAPV2, MsChapMessage(OpCode.SUCCESS, 0x51, text).to_bytes()).to_bytes()
    )
    assert ack == bytes([2, 0x52, 0, 6, MSCHAPV2, OpCode.SUCCESS])
    peer.handle(bytes([3, 0x52, 0, 4]))
    assert peer.result == EapResult.SUCCESS
    assert peer.msk == derive_msk(hash_nt_password_hash(nt_password_hash("correct horse")), nt)


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError):
        EapPeer("a", "b", methods=[EapType.GTC])
    with pytest.raises(ConfigError):
        make_server(EapType.GTC)
    with pytest.raises(ConfigError):
        make_server(MD5, ask_identity=False)
    server = make_server(MD5)
    server.start()
    with pytest.raises(LocalProtocolError):
        server.start()
