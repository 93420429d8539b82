"""Parse a charon file log: plain lines and the hex dumps charon prints for ``%B``.

A line looks like ``09:36:03 16[IKE] <rw|1> SKEYSEED => 32 bytes @ 0x7f26...``
(time, thread, subsystem, ``<conn|unique id>`` with ``ike_name = yes``, message),
followed by dump lines ``09:36:03 16[IKE] <rw|1>    0: 68 4C 62 ...  hLb...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(
    r"^(?P<time>\S+) (?P<thread>\d+)\[(?P<sub>[A-Z]+)\] (?:<(?P<sa>[^>]*)> )?(?P<msg>.*)$"
)
_DUMP_HEAD = re.compile(r"^(?P<label>.*?) => (?P<n>\d+) bytes @ (?:0x[0-9a-fA-F]+|\(nil\))$")
_DUMP_ROW = re.compile(r"^\s*\d+: (?P<hex>(?:[0-9A-F]{2} ){0,15}[0-9A-F]{2})(?:\s|$)")


@dataclass(frozen=True)
class LogEntry:
    """A log message; ``data`` is set when the message is a hex dump ``label => n bytes``."""

    line_no: int
    thread: str
    subsystem: str
    ike_sa: str | None
    text: str
    data: bytes | None = None

    @property
    def label(self) -> str:
        return self.text


def parse_log(text: str) -> list[LogEntry]:
    """All entries in order; dump rows are folded into their header entry's ``data``."""
    entries: list[LogEntry] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _LINE.match(lines[i])
        i += 1
        if not m:
            continue
        msg, thread = m["msg"], m["thread"]
        head = _DUMP_HEAD.match(msg)
        if head is None:
            entries.append(LogEntry(i, thread, m["sub"], m["sa"], msg.strip()))
            continue
        want = int(head["n"])
        data = bytearray()
        while len(data) < want and i < len(lines):
            row = _LINE.match(lines[i])
            if not row or row["thread"] != thread:
                break
            cells = _DUMP_ROW.match(row["msg"])
            if not cells:
                break
            data += bytes.fromhex(cells["hex"].replace(" ", ""))
            i += 1
        if len(data) != want:
            raise ValueError(f"log line {i}: dump {head['label']!r} has {len(data)}/{want} bytes")
        entries.append(LogEntry(i, thread, m["sub"], m["sa"], head["label"].strip(), bytes(data)))
    return entries
