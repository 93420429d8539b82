#!/bin/sh
# The main job: in network namespaces, mpa-mobile pre-authenticates through network A
# with mpa-gateway, the access router of network B (IKE_SA_INIT, IKE_AUTH with EAP, CP
# gives the nCoA, a tunnel-mode CHILD SA), a probe flow from a correspondent reaches the
# nCoA through that tunnel, and the MPA handover moves the MN to B with one
# UPDATE_SA_ADDRESSES while the flow goes on. Needs root. `python3 -m mpa_bench.samples` prints a sample
# exchange without namespaces.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m mpa_testbed.demo "$@"
