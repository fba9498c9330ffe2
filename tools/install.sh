#!/usr/bin/env bash
# Installs the sealink gateway as a systemd service (`sudo make install` runs it); run it again
# to upgrade: the venv is updated, the unit replaced, the config and the ledger kept.
#
#   /opt/sealink/                  a venv holding sealink and its dependencies (VENVDIR)
#   /usr/local/bin/sealink         a link into it, the path the unit runs (PREFIX/bin)
#   /etc/systemd/system/sealink.service                                      (UNITDIR)
#   /etc/sealink/sealink.toml      the config (the example, if none), 0600, the service user's
#   /var/lib/sealink/              the ledger's directory, 0700, the service user's
#   user sealink (SERVICE_USER), a system user without a login, in the serial group (dialout,
#   else uucp; SERIAL_GROUP) and in tss when the system has it (a TPM's group)
#
# Why a venv in /opt: Debian's Python (Raspberry Pi OS too) refuses `pip install` into the system
# (PEP 668), and apt's python3-* versions are not the ones sealink pins (paho-mqtt < 2.3, cbor2
# < 6): a venv of its own keeps both apart, and /opt is where the FHS puts such a self-contained
# tree. A venv names its own path in its scripts, so it sits at one fixed path, apart from
# PREFIX; the link in /usr/local/bin puts `sealink` on every administrator's PATH and gives the
# unit a path that does not change when the venv is rebuilt.
#
# DESTDIR stages everything under another root (an image being built; the tests): users are
# then added to DESTDIR/etc/passwd and group (`useradd --prefix`), which must exist there, and
# the venv's scripts name their final path. Variables: DESTDIR, PREFIX (/usr/local), VENVDIR
# (/opt/sealink), UNITDIR (/etc/systemd/system), SERVICE_USER (sealink), SERIAL_GROUP, EXTRAS
# (pip extras, e.g. "tpm,ble"), PYTHON (python3, 3.11 or later). Run as root.
set -euo pipefail

DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
PREFIX=${PREFIX:-/usr/local}
VENVDIR=${VENVDIR:-/opt/sealink}
UNITDIR=${UNITDIR:-/etc/systemd/system}
SERVICE_USER=${SERVICE_USER:-sealink}
EXTRAS=${EXTRAS:-}
PYTHON=${PYTHON:-python3}
CONFDIR=/etc/sealink
STATEDIR=/var/lib/sealink
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

fail() {
    echo "install.sh: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || fail "run as root (sudo make install): it adds a user and chowns directories"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || fail "$PYTHON is not Python 3.11 or later (PYTHON=...)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
    || fail "$PYTHON cannot make a venv: apt-get install python3-venv"
[ -f "$DESTDIR/etc/passwd" ] && [ -f "$DESTDIR/etc/group" ] \
    || fail "$DESTDIR/etc/passwd and group must exist (DESTDIR is a root file system)"

in_file() { # in_file FILE NAME: the line of NAME in a passwd or group file
    awk -F: -v name="$2" '$1 == name' "$1"
}

# On DESTDIR's users, not the host's (shadow's --prefix: no chroot, no program from DESTDIR).
user_tools_args=()
[ -n "$DESTDIR" ] && user_tools_args=(--prefix "$DESTDIR")

if [ -z "${SERIAL_GROUP:-}" ]; then
    for group in dialout uucp; do
        if [ -n "$(in_file "$DESTDIR/etc/group" "$group")" ]; then
            SERIAL_GROUP=$group
            break
        fi
    done
fi
[ -n "${SERIAL_GROUP:-}" ] && [ -n "$(in_file "$DESTDIR/etc/group" "$SERIAL_GROUP")" ] \
    || fail "no serial group (dialout, uucp) in $DESTDIR/etc/group: give SERIAL_GROUP=..."
groups=$SERIAL_GROUP
[ -n "$(in_file "$DESTDIR/etc/group" tss)" ] && groups+=,tss

if [ -z "$(in_file "$DESTDIR/etc/passwd" "$SERVICE_USER")" ]; then
    nologin=/usr/sbin/nologin
    [ -x "$DESTDIR$nologin" ] || [ -x "$nologin" ] || nologin=/bin/false
    useradd "${user_tools_args[@]}" --system --user-group --no-create-home \
        --home-dir "$STATEDIR" --shell "$nologin" --comment "sealink gateway" \
        --groups "$groups" "$SERVICE_USER"
else
    usermod "${user_tools_args[@]}" --append --groups "$groups" "$SERVICE_USER"
fi
uid=$(in_file "$DESTDIR/etc/passwd" "$SERVICE_USER" | cut -d: -f3)
gid=$(in_file "$DESTDIR/etc/passwd" "$SERVICE_USER" | cut -d: -f4)

# The venv. The wheel is built from a copy of the source, so that setuptools' build/ and
# egg-info never land in the checkout.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -C "$SRC" --exclude=__pycache__ --exclude='*.egg-info' -cf - \
    pyproject.toml README.md host protocol/sealproto hil-tests/sealink_hil | tar -C "$work" -xf -
venv=$DESTDIR$VENVDIR
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$work"
wheel=$(echo "$work"/dist/sealink-*.whl)
"$venv/bin/python" -m pip install --quiet "$wheel${EXTRAS:+[$EXTRAS]}"
# The same version number again is still this source: reinstalled, its dependencies kept.
"$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$wheel"
if [ -n "$DESTDIR" ]; then
    # The scripts' first lines (and activate) name the staged venv: name the final one.
    { grep -lZ --fixed-strings "$venv" "$venv"/bin/* "$venv/pyvenv.cfg" || true; } \
        | xargs -0 --no-run-if-empty sed -i "s|$venv|$VENVDIR|g"
fi
install -m 0644 "$SRC/README.md" "$venv/README.md"

install -d -m 0755 "$DESTDIR$PREFIX/bin"
for command in sealink sealink-verify; do
    ln -sfn "$VENVDIR/bin/$command" "$DESTDIR$PREFIX/bin/$command"
done

install -d -o "$uid" -g "$gid" -m 0700 "$DESTDIR$CONFDIR" "$DESTDIR$STATEDIR"
if [ ! -e "$DESTDIR$CONFDIR/sealink.toml" ]; then
    install -o "$uid" -g "$gid" -m 0600 "$SRC/host/examples/sealink.toml" \
        "$DESTDIR$CONFDIR/sealink.toml"
fi

install -d -m 0755 "$DESTDIR$UNITDIR"
sed "s|/usr/local/bin/sealink|$PREFIX/bin/sealink|g; s|/opt/sealink/|$VENVDIR/|g; \
s|^User=sealink$|User=$SERVICE_USER|; s|^Group=sealink$|Group=$SERVICE_USER|" "$SRC/tools/sealink.service" >"$work/sealink.service"
install -m 0644 "$work/sealink.service" "$DESTDIR$UNITDIR/sealink.service"

if [ -z "$DESTDIR" ]; then
    command -v systemd-analyze >/dev/null && systemd-analyze verify "$UNITDIR/sealink.service"
    [ -d /run/systemd/system ] && systemctl daemon-reload
fi
cat <<EOF
installed sealink $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("sealink"))') for user $SERVICE_USER (groups $groups)
next: edit $CONFDIR/sealink.toml, then as $SERVICE_USER make the keys and the ledger
(README.md "Install as a service"), then: systemctl enable --now sealink
EOF
