#!/bin/sh
# dropwire installer for Linux and macOS, served by the relay at /install.sh:
#
#   curl -fsSL https://RELAY/install.sh | sh -s -- TOKEN
#
# Downloads this machine's dropwire executable from the relay it came from, checks its SHA-256 against the
# relay's SHA256SUMS, installs it (/usr/local/bin as root, ~/.local/bin otherwise), enrolls with TOKEN
# (`dropwire init`) and installs the service (`dropwire service install`: a system service as root, a user
# service otherwise). It prints what it did and how to undo it.
#
# Options (after TOKEN or before it):
#   --root DIR   install under DIR instead of / (also DESTDIR=DIR); the service files are written there
#                and nothing is started (`service install --root`)
#   --dry-run    download and check, then print the commands it would run, and run none of them
#   --no-service enroll only
#   --base URL   the relay to download from (default: the one that served this script)
set -eu

BASE='__DROPWIRE_BASE_URL__'
ROOT="${DESTDIR:-}"
DRY_RUN=0
SERVICE=1
TOKEN=''

say() { printf '%s\n' "$*"; }
die() { printf 'dropwire install: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || die '--root needs a folder'; ROOT="$2"; shift 2 ;;
    --root=*) ROOT="${1#--root=}"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --no-service) SERVICE=0; shift ;;
    --base) [ $# -ge 2 ] || die '--base needs a URL'; BASE="$2"; shift 2 ;;
    --base=*) BASE="${1#--base=}"; shift ;;
    -h|--help) sed -n '2,19p' "$0" 2>/dev/null || true; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [ -z "$TOKEN" ] || die "one TOKEN only (got '$TOKEN' and '$1')"; TOKEN="$1"; shift ;;
  esac
done
[ -n "$TOKEN" ] || die 'usage: curl -fsSL RELAY/install.sh | sh -s -- TOKEN   (the token from `dropwire relay device add NAME`)'
case "$BASE" in
  http://*|https://*) BASE="${BASE%/}" ;;
  *) die "no relay address: pass --base https://RELAY" ;;
esac
if [ -n "$ROOT" ]; then
  case "$ROOT" in /*) ;; *) ROOT="$(pwd)/$ROOT" ;; esac
  ROOT="${ROOT%/}"
fi

# --- which executable ------------------------------------------------------------------------------
case "$(uname -s)" in
  Linux) OS=linux ;;
  Darwin) OS=darwin ;;
  *) die "unsupported system $(uname -s): on Windows use install.ps1" ;;
esac
case "$(uname -m)" in
  x86_64|amd64) ARCH=x64 ;;
  aarch64|arm64) ARCH=arm64 ;;
  *) die "unsupported processor $(uname -m): dropwire ships for x64 and arm64" ;;
esac
FILE="dropwire-$OS-$ARCH"

if command -v curl >/dev/null 2>&1; then
  fetch() { curl -fsSL --retry 2 -o "$2" "$1"; }
elif command -v wget >/dev/null 2>&1; then
  fetch() { wget -q -O "$2" "$1"; }
else
  die 'neither curl nor wget is installed'
fi
if command -v sha256sum >/dev/null 2>&1; then
  sha256() { sha256sum "$1" | cut -d' ' -f1; }
elif command -v shasum >/dev/null 2>&1; then
  sha256() { shasum -a 256 "$1" | cut -d' ' -f1; }
elif command -v openssl >/dev/null 2>&1; then
  sha256() { openssl dgst -sha256 -r "$1" | cut -d' ' -f1; }
else
  die 'no SHA-256 tool (sha256sum, shasum or openssl) to check the download'
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/dropwire-install.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT INT TERM

say "Downloading $FILE from $BASE"
fetch "$BASE/download/SHA256SUMS" "$TMP/SHA256SUMS" || die "could not download $BASE/download/SHA256SUMS"
fetch "$BASE/download/$FILE" "$TMP/$FILE" || die "could not download $BASE/download/$FILE (does the relay have a release for $OS-$ARCH?)"
WANT="$(awk -v f="$FILE" '$2 == f || $2 == "*" f { print $1; exit }' "$TMP/SHA256SUMS")"
[ -n "$WANT" ] || die "SHA256SUMS on the relay does not list $FILE"
GOT="$(sha256 "$TMP/$FILE")"
[ "$GOT" = "$WANT" ] || die "checksum mismatch for $FILE: got $GOT, SHA256SUMS says $WANT; refusing to install it"
say "Checked SHA-256 $GOT"

# --- where -----------------------------------------------------------------------------------------
# The agent folder is where `dropwire` itself looks: the system one as root, the per-user one otherwise.
if [ "$(id -u)" = 0 ]; then
  BIN_DIR=/usr/local/bin
  SCOPE=--system
  if [ "$OS" = darwin ]; then HOME_DIR='/Library/Application Support/dropwire'; else HOME_DIR=/etc/dropwire; fi
else
  [ -n "${HOME:-}" ] || die 'HOME is not set'
  BIN_DIR="$HOME/.local/bin"
  SCOPE=--user
  if [ "$OS" = darwin ]; then HOME_DIR="$HOME/Library/Application Support/dropwire"; else HOME_DIR="${XDG_CONFIG_HOME:-$HOME/.config}/dropwire"; fi
fi
AGENT_HOME="$ROOT$HOME_DIR"
BIN="$BIN_DIR/dropwire"

if [ "$DRY_RUN" = 1 ]; then
  say "Dry run: nothing installed. Would run:"
  say "  install -m 0755 $FILE $ROOT$BIN"
  say "  $ROOT$BIN init TOKEN --home '$AGENT_HOME'"
  [ "$SERVICE" = 0 ] || say "  $ROOT$BIN service install $SCOPE${ROOT:+ --root $ROOT --node $BIN}"
  exit 0
fi

mkdir -p "$ROOT$BIN_DIR"
chmod 0755 "$TMP/$FILE"
mv -f "$TMP/$FILE" "$ROOT$BIN.new"
mv -f "$ROOT$BIN.new" "$ROOT$BIN"
say "Installed $ROOT$BIN ($("$ROOT$BIN" --version))"

# --- enroll ----------------------------------------------------------------------------------------
if [ -f "$AGENT_HOME/config.json" ]; then
  # Installing again (an update): the host keeps its key and enrollment; the token is not used.
  say "Already enrolled ($AGENT_HOME/config.json): kept; the token was not used"
else
  "$ROOT$BIN" init "$TOKEN" --home "$AGENT_HOME"
fi

# --- service ---------------------------------------------------------------------------------------
STATUS=0
if [ "$SERVICE" = 1 ]; then
  if [ -n "$ROOT" ]; then
    # The service files name the executable where it will be once DIR is the root.
    "$ROOT$BIN" service install $SCOPE --root "$ROOT" --node "$BIN" || STATUS=$?
  else
    "$BIN" service install $SCOPE || STATUS=$?
  fi
  [ "$STATUS" = 0 ] || say "The service was not installed (exit $STATUS, see above): fix that, then run $BIN service install $SCOPE"
fi

say ''
if [ "$STATUS" = 0 ]; then say 'dropwire is installed.'; else say 'dropwire is installed, without its service.'; fi
case ":${PATH:-}:" in
  *":$BIN_DIR:"*) ;;
  *) say "Note: $BIN_DIR is not on your PATH; add it, or call $BIN." ;;
esac
say 'To undo:'
[ "$SERVICE" = 0 ] || say "  $BIN service uninstall $SCOPE"
say "  rm $ROOT$BIN"
say "  rm -r '$AGENT_HOME'   (the agent's key, config and journal)"
exit "$STATUS"
