"""MS-CHAPv2 crypto against published vectors.

RFC 2759 §9.2 ("Hash Example"): UserName "User", Password "clientPass",
the challenges, ChallengeHash, PasswordHash, NT-Response, PasswordHashHash and
AuthenticatorResponse. RFC 3079 §3.5.3 (128-bit key example, same inputs):
MasterKey and SendStartKey128.
"""

from __future__ import annotations

from mpa_ike.eap.mschapv2 import (
    MSK_LENGTH,
    asymmetric_start_key,
    authenticator_response,
    challenge_hash,
    challenge_response,
    check_authenticator_response,
    derive_msk,
    format_authenticator_response,
    generate_nt_response,
    hash_nt_password_hash,
    master_key,
    nt_password_hash,
    user_name_of,
)

USER = b"User"
PASSWORD = "clientPass"
AUTH_CHALLENGE = bytes.fromhex("5B5D7C7D7B3F2F3E3C2C602132262628")
PEER_CHALLENGE = bytes.fromhex("21402324255E262A28295F2B3A337C7E")
CHALLENGE = bytes.fromhex("D02E4386BCE91226")
PASSWORD_HASH = bytes.fromhex("44EBBA8D5312B8D611474411F56989AE")
NT_RESPONSE = bytes.fromhex("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")
PASSWORD_HASH_HASH = bytes.fromhex("41C00C584BD2D91C4017A2A12FA59F3F")
AUTHENTICATOR_RESPONSE = "S=407A5589115FD0D6209F510FE9C04566932CDA56"
MASTER_KEY = bytes.fromhex("FDECE3717A8C838CB388E527AE3CDD31")
SEND_START_KEY_128 = bytes.fromhex("8B7CDC149B993A1BA118CB153F56DCCB")


def test_rfc2759_password_hashes() -> None:
    assert nt_password_hash(PASSWORD) == PASSWORD_HASH
    assert hash_nt_password_hash(PASSWORD_HASH) == PASSWORD_HASH_HASH


def test_rfc2759_challenge_hash_and_response() -> None:
    assert challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, USER) == CHALLENGE
    assert challenge_response(CHALLENGE, PASSWORD_HASH) == NT_RESPONSE
    assert generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, PASSWORD) == NT_RESPONSE


def test_rfc2759_authenticator_response() -> None:
    value = authenticator_response(PASSWORD, NT_RESPONSE, PEER_CHALLENGE, AUTH_CHALLENGE, USER)
    assert format_authenticator_response(value) == AUTHENTICATOR_RESPONSE
    assert check_authenticator_response(value, AUTHENTICATOR_RESPONSE[2:].lower())
    assert not check_authenticator_response(value, AUTHENTICATOR_RESPONSE[2:-2] + "00")
    assert not check_authenticator_response(value, "zz")


def test_rfc3079_master_key_and_start_key() -> None:
    master = master_key(PASSWORD_HASH_HASH, NT_RESPONSE)
    assert master == MASTER_KEY
    # §3.5.3 prints the server's send key (Magic3), which is the client's receive key.
    server_send = asymmetric_start_key(master, 16, is_send=True, is_server=True)
    assert server_send == SEND_START_KEY_128
    assert asymmetric_start_key(master, 16, is_send=False, is_server=False) == server_send
    client_send = asymmetric_start_key(master, 16, is_send=True, is_server=False)
    assert asymmetric_start_key(master, 16, is_send=False, is_server=True) == client_send
    assert client_send != server_send


def test_msk_is_strongswan_layout() -> None:
    """strongSwan: authenticator's MasterReceiveKey | MasterSendKey | 32 zero octets."""
    msk = derive_msk(PASSWORD_HASH_HASH, NT_RESPONSE)
    master = master_key(PASSWORD_HASH_HASH, NT_RESPONSE)
    server_receive = asymmetric_start_key(master, 16, is_send=False, is_server=True)
    assert len(msk) == MSK_LENGTH
    assert msk[:16] == server_receive
    assert msk[16:32] == SEND_START_KEY_128
    assert msk[32:] == bytes(32)


def test_user_name_drops_domain() -> None:
    assert user_name_of(b"BIGCO\\johndoe") == b"johndoe"
    assert user_name_of(b"johndoe") == b"johndoe"
    assert user_name_of(b"BIGCO\\") == b""
