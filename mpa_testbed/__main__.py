"""``python3 -m mpa_testbed up|down|status|link|probe|exec``: the testbed from a shell (root).

python3 -m mpa_testbed up --emu a:delay=10ms --emu ngw-core:delay=25ms,loss=1%
python3 -m mpa_testbed link tb1a2b3c a down      # the layer-2 handover, by hand
python3 -m mpa_testbed exec tb1a2b3c cn -- ip route
python3 -m mpa_testbed down tb1a2b3c             # or: down --all
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence

from mpa_testbed.linkemu import Control
from mpa_testbed.probe import analyse
from mpa_testbed.topology import (
    LINK_NAMES,
    NODES,
    Testbed,
    TestbedSpec,
    running_prefixes,
    state_dir,
    status,
    teardown,
)


def _emu_option(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    if name not in LINK_NAMES:
        raise argparse.ArgumentTypeError(f"unknown link {name!r}; links are {LINK_NAMES}")
    changes: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected key=value in {item!r}")
        changes[key] = value
    return name, changes


def _up(args: argparse.Namespace) -> int:
    spec = TestbedSpec(family=args.family, prefix=args.prefix)
    for name, changes in args.emu:
        spec.emulate(name, **changes)
    if args.all_up:
        for conf in spec.links.values():
            conf.up = True
    bed = Testbed(spec).up()
    # The emulator was started detached: it outlives this command until `down`.
    print(bed.prefix, flush=True)
    with contextlib.suppress(BrokenPipeError):  # `| head -1` to keep the prefix only
        for node in NODES:
            addrs = ", ".join(f"{dev} {' '.join(c)}" for dev, c in bed.addresses(node).items())
            print(f"  {bed.ns(node):14} {addrs}", flush=True)
    return 0


def _down(args: argparse.Namespace) -> int:
    prefixes = running_prefixes() if args.all else args.prefix
    if not prefixes:
        print("nothing to remove (give a prefix or --all)", file=sys.stderr)
    for prefix in prefixes:
        teardown(prefix)
        print(f"removed {prefix}")
    return 0


def _link(args: argparse.Namespace) -> int:
    state = json.loads((state_dir() / f"{args.prefix}.json").read_text())
    if args.name in state.get("emulated", []):
        ctl = Control(state["control"])
        if args.action == "down":
            ctl.set_down(args.name)
        elif args.action == "up":
            ctl.set_up(args.name)
        else:
            print(json.dumps(ctl.stats()[args.name], indent=2))
        return 0
    spec = TestbedSpec(family=state["family"], prefix=args.prefix)
    link = Testbed(spec).link(args.name)
    if args.action == "stats":
        print("veth links keep no statistics here; see ip -s link", file=sys.stderr)
        return 1
    link.set_down() if args.action == "down" else link.set_up()
    return 0


def _probe(args: argparse.Namespace) -> int:
    state = json.loads((state_dir() / f"{args.prefix}.json").read_text())
    bed = Testbed(TestbedSpec(family=state["family"], prefix=args.prefix))
    flow = bed.probe(
        args.src, args.dst, args.target, interval=args.interval, duration=args.duration
    )
    report = analyse(flow.start().wait(args.duration + 30))
    print(json.dumps(report.summary(), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m mpa_testbed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build a testbed and print its prefix")
    up.add_argument("--family", choices=["dual", "split"], default="dual")
    up.add_argument("--prefix", help="tb + 6 hex digits (default: random)")
    up.add_argument(
        "--emu",
        type=_emu_option,
        action="append",
        default=[],
        metavar="LINK[:k=v,...]",
        help="emulate LINK with delay, jitter, loss, rate, queue (repeatable)",
    )
    up.add_argument("--all-up", action="store_true", help="networks B and C up too")
    down = sub.add_parser("down", help="remove testbeds by prefix, even after a crash")
    down.add_argument("prefix", nargs="*")
    down.add_argument("--all", action="store_true")
    sub.add_parser("status", help="list running testbeds")
    link = sub.add_parser("link", help="layer-2 event on a link")
    link.add_argument("prefix")
    link.add_argument("name", choices=LINK_NAMES)
    link.add_argument("action", choices=["down", "up", "stats"])
    probe = sub.add_parser("probe", help="a probe flow; prints gaps and losses both ways")
    probe.add_argument("prefix")
    probe.add_argument("src", choices=NODES)
    probe.add_argument("dst", choices=NODES)
    probe.add_argument("target", help="the address of dst to probe")
    probe.add_argument("--duration", type=float, default=5.0)
    probe.add_argument("--interval", type=float, default=0.001)
    ex = sub.add_parser("exec", help="run a command in a node")
    ex.add_argument("prefix")
    ex.add_argument("node", choices=NODES)
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the testbed needs root (network namespaces, TAP devices)", file=sys.stderr)
        return 1
    if args.command == "up":
        return _up(args)
    if args.command == "down":
        return _down(args)
    if args.command == "status":
        print(json.dumps(status(), indent=2))
        return 0
    if args.command == "link":
        return _link(args)
    if args.command == "probe":
        return _probe(args)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    os.execvp("ip", ["ip", "netns", "exec", f"{args.prefix}-{args.node}", *cmd])


if __name__ == "__main__":
    sys.exit(main())
