"""Running as an unprivileged user once the sockets and devices are open.

A daemon started as root with ``user:`` in its configuration opens what needs root (IKE
ports below 1024, the TUN device, raw ESP sockets, XFRM and routing netlink sockets)
and then becomes that user, keeping only the capabilities its datapath still uses:
CAP_NET_ADMIN for routes, addresses, XFRM states and the forwarding sysctls,
CAP_NET_RAW while raw ESP sockets are in use, CAP_NET_BIND_SERVICE for a daemon that
binds IKE ports later (the mobile node, at each connect).

How: prctl(PR_SET_KEEPCAPS) so that the permitted set survives the change of user,
setgroups/setresgid/setresuid, then capset(2) to make the kept capabilities effective
(the change of user empties the effective set) and drop every other one from the
permitted set. Ambient capabilities would not spare any of it: they only matter across
execve, and the change of user clears them as well unless KEEPCAPS is set. The calls
the os module lacks (prctl, capset) go through ctypes on the C library; os.setresuid
changes the user of every thread (glibc's setxid broadcast), capset only the calling
one: the event loop's thread, which is where the datapath runs. Threads started later
inherit its capabilities.

Under systemd, ``User=`` with ``AmbientCapabilities=`` starts the daemon unprivileged
with these capabilities already, and ``user:`` is not needed.
"""

from __future__ import annotations

import ctypes
import functools
import grp
import logging
import os
import pwd
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

# <linux/capability.h>
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAPABILITY_NAMES = {
    CAP_NET_BIND_SERVICE: "cap_net_bind_service",
    CAP_NET_ADMIN: "cap_net_admin",
    CAP_NET_RAW: "cap_net_raw",
}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# <linux/prctl.h>
PR_SET_KEEPCAPS = 8


class PrivilegeError(Exception):
    """The daemon cannot become the configured user (one line)."""


class Identity(NamedTuple):
    """Whom to run as: a user, its group and supplementary groups."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def identity(user: str, group: str | None = None) -> Identity:
    """The user ``user`` with ``group`` (default: the user's) and its other groups."""
    try:
        entry = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group is not None else entry.pw_gid
    except KeyError as error:
        raise PrivilegeError(f"no such user or group: {error.args[0]}") from None
    groups = tuple(sorted(set(os.getgrouplist(user, gid))))
    return Identity(user, entry.pw_uid, gid, groups)


def group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise PrivilegeError(f"no such group: {name!r}") from None


def become(who: Identity, keep: Iterable[int]) -> None:
    """Become ``who`` keeping the capabilities ``keep`` (effective and permitted).

    Already ``who`` (started unprivileged, as by systemd's User=): nothing changes.
    Raises PrivilegeError if the change is refused (not root, or a capability the
    process does not have).
    """
    if os.getresuid() == (who.uid, who.uid, who.uid):
        return
    if os.geteuid() != 0:
        raise PrivilegeError(f"cannot become user {who.name}: not started as root")
    capabilities = sorted(set(keep))
    try:
        _prctl(PR_SET_KEEPCAPS, 1)
        os.setgroups(list(who.groups))
        os.setresgid(who.gid, who.gid, who.gid)
        os.setresuid(who.uid, who.uid, who.uid)
        _prctl(PR_SET_KEEPCAPS, 0)
        set_capabilities(capabilities)
    except OSError as error:
        raise PrivilegeError(f"cannot become user {who.name}: {error.strerror}") from None
    log.info(
        "running as user %s (uid %d, gid %d), capabilities: %s",
        who.name,
        who.uid,
        who.gid,
        ", ".join(CAPABILITY_NAMES.get(c, str(c)) for c in capabilities) or "none",
    )


def set_capabilities(capabilities: Iterable[int]) -> None:
    """capset(2): exactly ``capabilities`` effective and permitted, none inheritable."""
    mask = 0
    for capability in capabilities:
        mask |= 1 << capability
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for index in range(2):
        word = (mask >> (32 * index)) & 0xFFFFFFFF
        data[index].effective = data[index].permitted = word
    if _libc().capset(ctypes.byref(header), data) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def effective_capabilities(pid: int | str = "self") -> int:
    """The CapEff mask of a process, from /proc."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^CapEff:\s*([0-9a-f]+)$", text, re.MULTILINE)
    return int(match.group(1), 16) if match else 0


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _prctl(option: int, value: int) -> None:
    if _libc().prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


@functools.cache
def _libc() -> ctypes.CDLL:
    # The interpreter's own symbols, the C library's among them: no search for the file.
    return ctypes.CDLL(None, use_errno=True)
