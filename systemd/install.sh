#!/usr/bin/env bash
# Install acquired as a system service (run as root; `make install` calls it).
#
#   systemd/install.sh [--prefix DIR] [--python PY] [--venv DIR] [--skip-pip] [--no-reload]
#
# What it does, in order (idempotent: run it again to upgrade):
#   1. a venv in PREFIX/venv (default /opt/acquired/venv) with this checkout installed
#      (not editable: the service does not depend on the checkout afterwards);
#   2. the unit      -> /usr/local/lib/systemd/system/acquired.service
#      the user      -> /usr/local/lib/sysusers.d/acquired.conf  (then systemd-sysusers)
#      the folders   -> /usr/local/lib/tmpfiles.d/acquired.conf  (then systemd-tmpfiles --create)
#   3. /etc/acquired/acquired.toml, commented defaults, only if there is none yet
#      (an existing one is never touched; the shipped version goes to acquired.toml.dist);
#   4. /usr/local/bin/acquirectl -> the venv's acquirectl;
#   5. systemctl daemon-reload when systemd runs. It does not enable or start the service:
#        systemctl enable --now acquired
#
# Options
#   --prefix DIR   install root for the venv and README (default /opt/acquired)
#   --python PY    interpreter for the venv, >= 3.11 (default python3)
#   --venv DIR     use this venv instead of PREFIX/venv; ExecStart points into it
#   --skip-pip     do not create or upgrade the venv: it already holds acquired
#                  (packaging, or a prebuilt venv mounted read-only)
#   --no-reload    do not run systemctl daemon-reload
#   DESTDIR=...    (environment) only stage the files under DESTDIR (for packaging):
#                  no venv, no user, no folders, no systemctl
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/opt/acquired
PYTHON=python3
VENV=""
SKIP_PIP=0
RELOAD=1
DESTDIR=${DESTDIR:-}

while (($#)); do
  case $1 in
    --prefix) PREFIX=${2:?--prefix needs a folder}; shift 2 ;;
    --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
    --venv) VENV=${2:?--venv needs a folder}; shift 2 ;;
    --skip-pip) SKIP_PIP=1; shift ;;
    --no-reload) RELOAD=0; shift ;;
    -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
VENV=${VENV:-$PREFIX/venv}
case $PREFIX$VENV in *[[:space:]]*) echo "install.sh: paths with spaces are not supported" >&2; exit 2 ;; esac

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

if [[ -z $DESTDIR && $(id -u) != 0 ]]; then
  die "run as root (sudo make install), or set DESTDIR to stage the files"
fi

UNIT_DIR=$DESTDIR/usr/local/lib/systemd/system
SYSUSERS_DIR=$DESTDIR/usr/local/lib/sysusers.d
TMPFILES_DIR=$DESTDIR/usr/local/lib/tmpfiles.d
CONF_DIR=$DESTDIR/etc/acquired
BIN_DIR=$DESTDIR/usr/local/bin

# ---------------------------------------------------------------- 1. venv
if [[ $SKIP_PIP == 0 && -z $DESTDIR ]]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2> /dev/null \
    || die "$PYTHON is missing or older than 3.11; pass --python /path/to/python3.11"
  if [[ ! -x $VENV/bin/python ]]; then
    say "creating venv $VENV ($("$PYTHON" -V 2>&1))"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV" || die "venv creation failed (Debian: apt-get install python3-venv)"
  fi
  say "installing acquired from $SRC into $VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  # systemd-python is built from source: it needs libsystemd-dev, pkg-config and gcc
  # (`make setup` installs them).
  "$VENV/bin/pip" install --quiet --upgrade "$SRC" \
    || die "pip install failed (systemd-python needs: apt-get install libsystemd-dev pkg-config gcc python3-dev)"
fi
if [[ -z $DESTDIR ]]; then
  [[ -x $VENV/bin/acquired ]] || die "$VENV/bin/acquired is missing: the venv does not hold acquired"
fi
mkdir -p "$DESTDIR$PREFIX"
install -m 0644 "$SRC/README.md" "$DESTDIR$PREFIX/README.md"

# ---------------------------------------------------------------- 2. unit, sysusers, tmpfiles
install -d -m 0755 "$UNIT_DIR" "$SYSUSERS_DIR" "$TMPFILES_DIR" "$BIN_DIR"
# The unit names /opt/acquired/venv and /opt/acquired/README.md: follow --prefix/--venv.
sed -e "s|/opt/acquired/venv|@VENV@|g" -e "s|/opt/acquired/|@PREFIX@/|g" \
  -e "s|@VENV@|$VENV|g" -e "s|@PREFIX@|$PREFIX|g" \
  "$SRC/systemd/acquired.service" > "$UNIT_DIR/acquired.service.tmp"
chmod 0644 "$UNIT_DIR/acquired.service.tmp"
mv -f "$UNIT_DIR/acquired.service.tmp" "$UNIT_DIR/acquired.service"
install -m 0644 "$SRC/systemd/acquired.sysusers" "$SYSUSERS_DIR/acquired.conf"
install -m 0644 "$SRC/systemd/acquired.tmpfiles" "$TMPFILES_DIR/acquired.conf"
say "unit $UNIT_DIR/acquired.service, sysusers.d and tmpfiles.d entries installed"

if [[ -z $DESTDIR ]]; then
  systemd-sysusers "$SYSUSERS_DIR/acquired.conf"
  systemd-tmpfiles --create "$TMPFILES_DIR/acquired.conf" \
    || say "warning: systemd-tmpfiles reported a problem (see above); the folders may lack the ACL"
fi

# ---------------------------------------------------------------- 3. configuration
install -d -m 0755 "$CONF_DIR"
if [[ -e $CONF_DIR/acquired.toml ]]; then
  install -m 0644 "$SRC/systemd/acquired.toml" "$CONF_DIR/acquired.toml.dist"
  say "kept the existing $CONF_DIR/acquired.toml (the shipped defaults are in acquired.toml.dist)"
else
  install -m 0644 "$SRC/systemd/acquired.toml" "$CONF_DIR/acquired.toml"
  say "wrote $CONF_DIR/acquired.toml"
fi

# ---------------------------------------------------------------- 4. acquirectl on PATH
ln -sfn "$VENV/bin/acquirectl" "$BIN_DIR/acquirectl"

# ---------------------------------------------------------------- 5. tell systemd
if [[ -z $DESTDIR && $RELOAD == 1 && -d /run/systemd/system ]]; then
  systemctl daemon-reload
  say "systemctl daemon-reload done"
fi
say "done. Next: systemctl enable --now acquired; usermod -aG acquired \$OPERATOR"
