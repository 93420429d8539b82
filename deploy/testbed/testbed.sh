#!/bin/sh
# The handover testbed in network namespaces (root): up | down | status | link | exec.
# See deploy/testbed/topology.py for the topology and address plan.
cd "$(dirname "$0")/../.." && exec python3 -m mpa_testbed "$@"
