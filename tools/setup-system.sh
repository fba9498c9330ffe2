#!/usr/bin/env bash
# Installs the system packages sealink needs (Debian/Ubuntu). As root it installs them;
# otherwise it names what to install and fails, so nothing half-works later.
set -euo pipefail
missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
# `sealink fleet`: its tests and bench start a private PostgreSQL 15 cluster (initdb, postgres).
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
# The acknowledgement key in a TPM: tpm2-pytss builds against libtss2 (its headers and
# pkg-config files) and loads the device and swtpm TCTIs; the tests' TPM is swtpm.
command -v swtpm >/dev/null 2>&1 || missing+=(swtpm)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
[ -e /usr/include/tss2/tss2_esys.h ] || missing+=(libtss2-dev)
# tpm2-pytss has no wheel: pip compiles it (cffi), which takes a compiler and Python's headers.
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
    || missing+=(python3-dev)
# The console's tests drive Debian's headless Chromium (Playwright's own download is unreachable).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "sealink needs these system packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing system packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
