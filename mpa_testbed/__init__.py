"""A handover testbed in network namespaces, with userspace link emulation and probe flows.

- ``linkemu``: TAP pairs carried by a userspace process that applies delay, jitter, loss and
  rate per direction, and drops the carrier for a layer-2 handover (no netem needed).
- ``topology``: the MPA topology (MN, access router of A, nGW on B, gateway on C, core, CN).
- ``probe``: a sequence-numbered UDP flow, a reflector, the gap analysis, ICMP echo.
- ``calibrate``: what the emulator adds on the host it runs on, measured against veth.

Run ``python3 -m mpa_testbed --help`` (or ``deploy/testbed/testbed.sh``) as root.
"""
