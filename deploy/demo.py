"""The main job, end to end in network namespaces: pre-authentication through network A.

Builds the testbed of ``deploy/testbed`` (MN on network A, the nGW as access router of
network B, a correspondent node behind the core), starts ``mpa-gateway`` in the nGW and
``mpa-mobile`` in the MN, pre-authenticates the MN with the nGW through A (IKE_SA_INIT,
IKE_AUTH with EAP, CP: the nCoA, a tunnel-mode CHILD SA: the proactive handover tunnel),
shows both sides' status, and sends a 1 ms probe flow from the correspondent to the nCoA
through the tunnel. Everything is torn down at the end, also on Ctrl-C.

Run as root from the repository: ``./deploy/demo.sh`` (or ``python3 -m deploy.demo``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from deploy.testbed.probe import analyse
from deploy.testbed.topology import Testbed, TestbedSpec

GATEWAY_ID = "ngw.mpa-ike.test"
EAP_USER = "alice"
EAP_PASSWORD = "alice-demo-secret"
PSK = "mpa-ike demo gateway key"
CN_NETWORK = "10.0.9.0/24"


def gateway_config(bed: Testbed, workdir: Path, method: str) -> Path:
    data = {
        "listen": [bed.addr("ngw", "ngw-b")],
        "id": GATEWAY_ID,
        "psk": PSK,
        "ike": ["aes128-sha256-x25519"],
        "esp": ["aes128gcm16"],
        "pool": [bed.pool("ngw")],
        "local_ts": [CN_NETWORK],
        "eap": {"method": method, "users": {EAP_USER: EAP_PASSWORD}},
        "control_socket": str(workdir / "gw.sock"),
        "datapath": "userspace",
        "log_level": "info",
    }
    return write_yaml(workdir / "gateway.yaml", data)


def mobile_config(bed: Testbed, workdir: Path, method: str) -> Path:
    data = {
        "identity": f"{EAP_USER}@mpa-ike.test",
        "eap": {"method": method, "password": EAP_PASSWORD, "identity": EAP_USER},
        "control_socket": str(workdir / "mn.sock"),
        "datapath": "userspace",
        "log_level": "info",
        "gateways": {
            "ngw": {
                "address": bed.addr("ngw", "ngw-b"),
                "id": GATEWAY_ID,
                "psk": PSK,
                "ike": ["aes128-sha256-x25519"],
                "esp": ["aes128gcm16"],
                "remote_ts": [CN_NETWORK],
            }
        },
    }
    return write_yaml(workdir / "mobile.yaml", data)


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start_daemon(bed: Testbed, node: str, module: str, config: Path, log: Path) -> None:
    bed.popen(
        node,
        [sys.executable, "-m", module, "run", "-c", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def cli(bed: Testbed, node: str, module: str, config: Path, *args: str) -> str:
    proc = bed.exec(
        node, [sys.executable, "-m", module, "-c", str(config), *args], check=False, timeout=15
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)}: {proc.stderr.strip() or proc.stdout}")
    return proc.stdout


def wait_for_daemon(bed: Testbed, node: str, module: str, config: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            cli(bed, node, module, config, "status", "--json")
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run_demo(method: str, workdir: Path) -> int:
    with Testbed(TestbedSpec()) as bed:
        print(f"testbed {bed.prefix}: MN on network A ({bed.addr('mn', 'mn-a')}),")
        print(f"  nGW {bed.addr('ngw', 'ngw-b')} serving network B, pool {bed.pool('ngw')}")
        gw_conf = gateway_config(bed, workdir, method)
        mn_conf = mobile_config(bed, workdir, method)
        start_daemon(bed, "ngw", "gateway.cli", gw_conf, workdir / "gateway.log")
        start_daemon(bed, "mn", "mobile.cli", mn_conf, workdir / "mobile.log")
        wait_for_daemon(bed, "ngw", "gateway.cli", gw_conf)
        wait_for_daemon(bed, "mn", "mobile.cli", mn_conf)

        started = time.monotonic()
        answer = cli(bed, "mn", "mobile.cli", mn_conf, "connect", "ngw").strip()
        elapsed_ms = (time.monotonic() - started) * 1e3
        print(f"pre-authentication through A (EAP-{method.upper()}): {answer}")
        print(f"  connect command answered in {elapsed_ms:.1f} ms")

        mn_status = json.loads(cli(bed, "mn", "mobile.cli", mn_conf, "status", "--json"))
        print("mpa-mobile status:")
        print(cli(bed, "mn", "mobile.cli", mn_conf, "status"))
        print("mpa-gateway status:")
        print(cli(bed, "ngw", "gateway.cli", gw_conf, "status"))
        ncoa = mn_status["ike_sas"][0]["address"]
        return probe_tunnel(bed, ncoa)


def probe_tunnel(bed: Testbed, ncoa: str) -> int:
    print(f"probe flow: correspondent -> nCoA {ncoa} through the tunnel, 1 ms for 1 s")
    report = analyse(bed.probe("cn", "mn", ncoa, duration=1.0).start().wait())
    for direction, figures in report.summary().items():
        print(
            f"  {direction}: {figures['received']}/{figures['expected']} received, "
            f"longest gap {figures['longest_gap_ms']} ms, "
            f"median one-way delay {figures['delay_median_ms']} ms"
        )
    delivered = report.forward.received > 0 and report.reverse.received > 0
    print("traffic flows through the proactive handover tunnel" if delivered else "NO TRAFFIC")
    return 0 if delivered else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--eap", choices=["md5", "mschapv2"], default="mschapv2")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="mpa-demo-"))
    try:
        return run_demo(args.eap, workdir)
    except (RuntimeError, subprocess.SubprocessError) as error:
        print(f"demo failed: {error}", file=sys.stderr)
        for log in sorted(workdir.glob("*.log")):
            print(f"--- {log.name} (last lines)", file=sys.stderr)
            print("\n".join(log.read_text().splitlines()[-15:]), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)


if __name__ == "__main__":
    sys.exit(main())
