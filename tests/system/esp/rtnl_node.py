"""Run inside a namespace: apply rtnetlink requests with :mod:`mpa_ike.io.rtnl`.

argv[1] is a JSON list of steps, each ``[method, command, kwargs]`` (``method`` "addr",
"route", "rule", or "call" for :meth:`mpa_ike.io.tun.Netlink.call`'s fallback check)
or ``["addresses", interface, family]``; interface names in kwargs under ``dev`` are
resolved to ``index``/``oif``. Prints one JSON result per step: ``"ok"``, an errno, or
the addresses listed.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

from mpa_ike.io.links import AddressMover
from mpa_ike.io.rtnl import Rtnl, RtnlError
from mpa_ike.io.tun import Netlink


def main() -> None:
    rtnl, netlink = Rtnl(), Netlink()
    results: list[Any] = []
    for step in json.loads(sys.argv[1]):
        kind = step[0]
        if kind == "addresses":
            results.append(netlink.addresses(socket.if_nametoindex(step[1]), step[2]))
            continue
        if kind == "own":
            results.append(AddressMover(netlink).own_address(step[1], step[2], set(step[3])))
            continue
        kw = dict(step[2])
        if "dev" in kw:
            index = socket.if_nametoindex(kw.pop("dev"))
            kw["index" if kind in ("addr", "call_addr") else "oif"] = index
        try:
            if kind.startswith("call_"):
                netlink.call(kind[5:], step[1], **kw)
            else:
                rtnl.request(kind, step[1], **kw)
            results.append("ok")
        except RtnlError as error:
            results.append(error.code)
        except Exception as error:  # pyroute2's NetlinkError
            results.append(getattr(error, "code", repr(error)))
    netlink.close()
    rtnl.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
