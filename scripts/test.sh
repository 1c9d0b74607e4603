#!/usr/bin/env bash
# Runs trustwire's whole test suite with all features.
#
# First makes sure every service the suite needs is answering: it starts
# NATS (with JetStream) and RabbitMQ when they are installed but stopped,
# installs them from Debian's packages when they are missing and this runs
# as root, and otherwise stops with a message that says what to start.
#
# Environment: NATS_URL (default nats://127.0.0.1:4222) and AMQP_URL
# (default amqp://guest:guest@127.0.0.1:5672/%2f) point the suite at other
# servers; the checks here then only test that those answer.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test.sh] %s\n' "$*" >&2; }
fail() { printf '[test.sh] error: %s\n' "$*" >&2; exit 1; }

# Succeeds when a TCP connection to host $1 port $2 opens within 2 s.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# Waits up to $3 seconds for host $1 port $2.
wait_for_port() {
    local deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do
        port_open "$1" "$2" && return 0
        sleep 1
    done
    return 1
}

apt_updated=0
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        return 1
    fi
    if ((apt_updated == 0)); then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        apt_updated=1
    fi
    log "installing $* from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_nats() {
    if [[ -n ${NATS_URL:-} ]]; then
        log "NATS_URL is set to $NATS_URL; not starting a local server"
        return 0
    fi
    if port_open 127.0.0.1 4222; then
        log "NATS is answering on 127.0.0.1:4222"
        return 0
    fi
    if [[ ! -x /usr/sbin/nats-server ]]; then
        apt_install nats-server || fail "NATS is not running on 127.0.0.1:4222 and nats-server is not installed; install it (apt-get install nats-server) and start it with JetStream: nats-server -a 127.0.0.1 -p 4222 -js"
    fi
    log "starting nats-server with JetStream on 127.0.0.1:4222"
    mkdir -p /var/lib/nats-server 2>/dev/null || true
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log ||
        fail "could not start nats-server; start it yourself: nats-server -a 127.0.0.1 -p 4222 -js"
    wait_for_port 127.0.0.1 4222 30 || fail "nats-server did not answer on 127.0.0.1:4222 within 30 s; see /var/log/nats-server.log"
}

ensure_rabbitmq() {
    if [[ -n ${AMQP_URL:-} ]]; then
        log "AMQP_URL is set; not starting a local server"
        return 0
    fi
    if port_open 127.0.0.1 5672; then
        log "RabbitMQ is answering on 127.0.0.1:5672"
        return 0
    fi
    if ! command -v rabbitmq-server >/dev/null; then
        apt_install rabbitmq-server || fail "RabbitMQ is not running on 127.0.0.1:5672 and rabbitmq-server is not installed; install it (apt-get install rabbitmq-server) and start it: rabbitmq-server -detached"
    fi
    log "starting rabbitmq-server"
    rabbitmq-server -detached || fail "could not start RabbitMQ; start it yourself: rabbitmq-server -detached"
    wait_for_port 127.0.0.1 5672 120 || fail "RabbitMQ did not answer on 127.0.0.1:5672 within 120 s"
}

# Installs the independent JOSE implementations that the interop tests
# drive: Node's jose (tests/node, from the npm registry) and Python's
# joserfc (tests/python/.venv, from PyPI). Both steps are idempotent.
ensure_interop_tools() {
    command -v node >/dev/null || apt_install nodejs npm || fail "Node.js is missing; install nodejs and npm"
    if [[ ! -d tests/node/node_modules/jose ]]; then
        log "installing Node's jose into tests/node"
        (cd tests/node && npm install --no-audit --no-fund --loglevel=error) || fail "npm install in tests/node failed"
    fi
    if [[ ! -x tests/python/.venv/bin/python ]]; then
        log "creating tests/python/.venv with joserfc"
        python3 -m venv tests/python/.venv || fail "python3 -m venv failed; install python3-venv"
    fi
    if ! tests/python/.venv/bin/python -c "import joserfc" 2>/dev/null; then
        tests/python/.venv/bin/pip install --quiet -r tests/python/requirements.txt || fail "pip install joserfc failed"
    fi
}

# The gateway end-to-end test starts its own nginx (with auth_request) on
# loopback; it only needs the binary installed.
ensure_nginx() {
    if [[ -n ${NGINX:-} ]]; then
        log "NGINX is set to $NGINX; using that binary"
        return 0
    fi
    if [[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null; then
        log "nginx is installed"
        return 0
    fi
    apt_install nginx-light || apt_install nginx ||
        fail "nginx is missing and could not be installed from Debian's packages (that needs root); install it (apt-get install nginx-light, or nginx) or set NGINX to its path"
}

ensure_nats
ensure_rabbitmq
ensure_interop_tools
ensure_nginx

log "running the test suite (cargo test --all-features)"
cargo test --all-features --all-targets
cargo test --all-features --doc

log "running the quickstart example"
cargo run --quiet --example quickstart
