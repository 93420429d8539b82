"""Error types of the protocol core.

Two families, as in h11: :class:`LocalProtocolError` means this program misused
the API (a bug or bad configuration); :class:`RemoteProtocolError` and its
subclasses mean the peer sent something wrong. Remote errors carry the notify
type RFC 7296 says to answer with, so translating them into a reply happens in
exactly one place (the IKE SA), not wherever the problem was found.
"""

from __future__ import annotations

from mpa_ike.constants import NotifyType


class IkeError(Exception):
    """Base of every error raised by mpa_ike."""


class LocalProtocolError(IkeError):
    """This side misused the API or is misconfigured."""


class ConfigError(LocalProtocolError):
    """A configuration value (proposal string, key, identity, file) is invalid.

    ``key`` names the configuration key when one is known (``gateways.ngw.address``);
    ``str()`` is then ``key: message``, one line a command line can print as it is.
    """

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class RemoteProtocolError(IkeError):
    """The peer sent something invalid; ``notify`` is the error to answer with."""

    def __init__(
        self, message: str, notify: NotifyType = NotifyType.INVALID_SYNTAX, data: bytes = b""
    ) -> None:
        super().__init__(message)
        self.notify = notify
        self.data = data


class CodecError(RemoteProtocolError):
    """Bytes that do not parse as an IKEv2 message or payload.

    This is the only exception the parser lets escape, whatever the input.
    """


class IntegrityError(RemoteProtocolError):
    """An SK payload failed its ICV check or did not decrypt.

    RFC 7296 §2.21.1: such messages are dropped silently, never answered.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, NotifyType.INVALID_SYNTAX)
