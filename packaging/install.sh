#!/bin/sh
# Installs tako-server on a host without the Debian package (any systemd distribution, or
# none). The .deb is the preferred way; see packaging/README.md.
#
#   sudo packaging/install.sh [BINARY]     install or upgrade (BINARY defaults to
#                                          target/release/tako-server of this checkout)
#   sudo packaging/install.sh --uninstall  remove files and service; keep /opt/tako and users
#
# Files go to /usr/local and /etc, not to the package's /usr paths: the binary to
# /usr/local/bin/tako-server (the path the Tako CLI starts an upgrade candidate from), the
# unit to /etc/systemd/system with ExecStart pointing there, sysusers/tmpfiles/sysctl/sudoers
# snippets to /etc. DESTDIR=<dir> only lays the files out under <dir> (no users, no
# directories, no systemctl): for inspection and tests.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
DESTDIR=${DESTDIR:-}
BIN=/usr/local/bin/tako-server
UNIT=/etc/systemd/system/tako-server.service
SYSUSERS=/etc/sysusers.d/tako-server.conf
TMPFILES=/etc/tmpfiles.d/tako-server.conf
SYSCTL=/etc/sysctl.d/60-tako-server.conf
SUDOERS=/etc/sudoers.d/tako-server

say() { echo "install.sh: $*" >&2; }
die() { say "$*"; exit 1; }

systemd_running() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

uninstall() {
    if systemd_running; then
        systemctl disable --now tako-server.service || true
    fi
    rm -f "$DESTDIR$BIN" "$DESTDIR$UNIT" "$DESTDIR$SYSUSERS" "$DESTDIR$TMPFILES" \
        "$DESTDIR$SYSCTL" "$DESTDIR$SUDOERS"
    if systemd_running; then
        systemctl daemon-reload
    fi
    [ -n "$DESTDIR" ] || rm -rf /run/tako
    say "removed. Kept: /opt/tako (data), users tako, tako-proxy, tako-app and their homes."
}

create_users() {
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers "$SYSUSERS"
        return
    fi
    getent passwd tako >/dev/null || useradd --system --user-group --home-dir /home/tako \
        --shell /bin/bash --comment "Tako deploy user" tako
    getent passwd tako-proxy >/dev/null || useradd --system --user-group \
        --home-dir /nonexistent --shell /usr/sbin/nologin --comment "Tako proxy workers" tako-proxy
    getent passwd tako-app >/dev/null || useradd --system --user-group \
        --home-dir /var/lib/tako-app --shell /usr/sbin/nologin --comment "Tako apps" tako-app
}

create_deploy_home() {
    home=$(getent passwd tako | cut -d: -f6)
    case "$home" in /|/nonexistent|"") return ;; esac
    [ -e "$home" ] && return
    # mkhomedir_helper (libpam-modules-bin) copies /etc/skel with the right owner.
    if command -v mkhomedir_helper >/dev/null 2>&1; then
        mkhomedir_helper tako 0027 /etc/skel
    else
        install -d -m 0750 -o tako -g tako "$home"
    fi
}

create_dirs() {
    if command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles --create "$TMPFILES"
        return
    fi
    install -d -m 1770 -o root -g tako /run/tako
    install -d -m 0755 -o root -g root /opt/tako
    install -d -m 0755 -o tako -g tako /opt/tako/apps
    install -d -m 0700 -o tako-app -g tako-app /var/lib/tako-app
}

install_files() {
    src=$1
    install -D -m 0755 "$src" "$DESTDIR$BIN.new"
    # Atomic replace: a running server and an upgrade candidate keep executing the old inode.
    mv -f "$DESTDIR$BIN.new" "$DESTDIR$BIN"
    install -d "$DESTDIR/etc/systemd/system" "$DESTDIR/etc/sysusers.d" "$DESTDIR/etc/tmpfiles.d" \
        "$DESTDIR/etc/sysctl.d" "$DESTDIR/etc/sudoers.d"
    sed "s#^ExecStart=/usr/bin/tako-server#ExecStart=$BIN#" "$here/tako-server.service" \
        > "$DESTDIR$UNIT.tmp"
    chmod 0644 "$DESTDIR$UNIT.tmp"
    mv -f "$DESTDIR$UNIT.tmp" "$DESTDIR$UNIT"
    sed -i "s#/usr/share/doc/tako-server/README.md#$here/README.md#" "$DESTDIR$UNIT"
    install -m 0644 "$here/tako-server.sysusers" "$DESTDIR$SYSUSERS"
    install -m 0644 "$here/tako-server.tmpfiles" "$DESTDIR$TMPFILES"
    install -m 0644 "$here/tako-server.sysctl" "$DESTDIR$SYSCTL"
    # A broken sudoers file locks out sudo: check it before it goes live.
    if command -v visudo >/dev/null 2>&1; then
        visudo -c -q -f "$here/tako-server.sudoers" || die "tako-server.sudoers does not parse"
    fi
    install -m 0440 "$here/tako-server.sudoers" "$DESTDIR$SUDOERS"
}

[ "$(id -u)" -eq 0 ] || [ -n "$DESTDIR" ] || die "run as root (it creates users and /opt/tako)"

if [ "${1:-}" = "--uninstall" ]; then
    uninstall
    exit 0
fi

binary=${1:-$here/../target/release/tako-server}
[ -x "$binary" ] || die "no executable at $binary: build it (cargo build --release -p tako-server) or pass its path"
"$binary" --version >/dev/null || die "$binary --version failed"

upgrading=no
[ -e "$DESTDIR$BIN" ] && upgrading=yes
install_files "$binary"
[ -z "$DESTDIR" ] || { say "files laid out under $DESTDIR"; exit 0; }

create_users
create_deploy_home
create_dirs
# systemd-sysctl first: `sysctl` (procps) is missing on minimal installs.
if [ -x /usr/lib/systemd/systemd-sysctl ]; then
    /usr/lib/systemd/systemd-sysctl "$SYSCTL" >/dev/null 2>&1
else
    sysctl -q -p "$SYSCTL" >/dev/null 2>&1
fi || say "could not apply $SYSCTL now; it applies at boot"

if systemd_running; then
    systemctl daemon-reload
    if [ "$upgrading" = yes ]; then
        # The listeners wait in systemd's FD store during the restart: no connection is lost.
        # An admin's enable/disable choice is kept.
        systemctl try-restart tako-server.service
    else
        systemctl enable --now tako-server.service
    fi
    say "installed; systemctl status tako-server"
else
    say "installed; systemd is not running, start the server by hand:"
    say "  $BIN --socket /var/run/tako/tako.sock --data-dir /opt/tako"
fi
