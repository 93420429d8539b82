"""Crypto and key derivation for IKEv2: proposals, PRF/integrity/ciphers,
key exchange, RFC 7296 §2.13-2.18 key derivation, SK protection, AUTH, NAT-D.

Sans-I/O: randomness is a ``random(n) -> bytes`` callable defaulting to
:func:`os.urandom`, and key exchanges are built from given private bytes.
"""
