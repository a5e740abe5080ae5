#!/usr/bin/env bash
# Fresh-machine setup for netmangle (Debian 12, run as root): the Debian packages netmangle and
# its tests use, then the npm dependencies and the build. Safe to run again: apt is skipped when
# every package is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(iproute2 iputils-ping iperf3 tcpdump ethtool llvm clang libbpf-dev bpftool tshark tcpreplay python3-scapy python3-pytest)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]}; run this script as root to install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer no without a prompt.
  printf '%s\n' 'wireshark-common wireshark-common/install-setuid boolean false' 'iperf3 iperf3/start_daemon boolean false' | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: Debian packages already installed"
fi

npm ci --no-audit --no-fund
npm run build
echo "setup: done (try: bin/netmangle demo)"
