#!/usr/bin/env bash
# Installs everything mpa-ike needs on Debian 12 (run as root): strongSwan's
# charon (interop peer), FreeRADIUS (the AAA server of the tests), user-mode-linux
# (a kernel with ESP for the XFRM tests), tshark, iproute2, and this package
# with its test extras. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
    iproute2 tcpdump tshark iperf3 dnsmasq-base isc-dhcp-client
    strongswan-charon strongswan-swanctl charon-systemd strongswan-pki
    libcharon-extra-plugins libstrongswan-extra-plugins libstrongswan-standard-plugins
    libcharon-extauth-plugins
    freeradius freeradius-utils
    user-mode-linux kmod systemd
)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Debian's strongswan-starter unit is not wanted: tests start their own charons.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet strongswan 2>/dev/null; then
    systemctl stop strongswan || true
fi

pip_install() {
    python3 -m pip install -q "$@" || python3 -m pip install -q --break-system-packages "$@"
}
# compat mode: a plain path line in site-packages rather than setuptools' import
# finder, which costs every Python start (the daemons', the command line's) 10-50 ms.
pip_install -e '.[test]' --config-settings editable_mode=compat
echo "setup: done"
