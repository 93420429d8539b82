#!/bin/sh
# The main job, for now: build the deterministic sample IKE_SA_INIT + IKE_AUTH
# exchange with mpa_ike (SA/KE/Nonce/NAT-D, SK protection with derived keys),
# encode it, decode and decrypt it again, and print each message's payload chain
# and size. Later this becomes the MPA handover demo.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m mpa_ike.samples "$@"
