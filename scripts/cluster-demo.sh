#!/usr/bin/env bash
# A whole Corral cluster on this one machine, for trying it: a 3-member etcd, two servers
# (`corrald --role server`) and three agents (`corrald --role agent`, each given both servers,
# its own first), each agent in a network namespace of its own (its own address on a bridge,
# its own run and data directories; its QEMUs run in its namespace). The cluster CA comes from
# `corrald cluster init`, and each agent joins with a join token from `corral node join-token`.
#
#   scripts/cluster-demo.sh [up]   start it; returns once every agent's node is Ready and
#                                  prints the `export CORRAL_…=…` lines for the CLI
#   scripts/cluster-demo.sh env    print those lines again
#   scripts/cluster-demo.sh down   remove everything it started: processes (QEMUs included),
#                                  namespaces, links and files
# The agents share one storage pool, `shared` ($CORRAL_DEMO_DIR/pool, standing in for NFS):
# VMs on volumes made there move live without a disk copy and restart on another agent.
# And, to see the cluster cope with failures:
#   scripts/cluster-demo.sh start NAME   start etcd-N, server-X or agent-N again, as it was
#                                        started (after `kill -9 $(cat <dir>/pids/NAME)`)
#   scripts/cluster-demo.sh cut agent-N  cut the agent's link to the bridge (a partition)
#   scripts/cluster-demo.sh heal agent-N put it back
#
# Needs root (namespaces, links). Settings, from the environment:
#   CORRAL_DEMO_DIR      where its files go (default /tmp/corral-demo; keep it short:
#                        VM socket paths must fit in 107 bytes)
#   CORRAL_DEMO_BIN      directory holding corrald and corral (default: built with
#                        `cargo build --release` into target/release)
#   CORRAL_DEMO_PREFIX   prefix of its namespaces and links, at most 7 characters (crldemo)
#   CORRAL_DEMO_NET      the bridge's /24, its first three numbers (10.77.0)
#   CORRAL_DEMO_PORT     first of the ports etcd and the servers listen on (23790)
#   CORRAL_DEMO_NODE_TTL the node TTL of servers and agents (10s)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

dir=${CORRAL_DEMO_DIR:-/tmp/corral-demo}
state=$dir/demo.env

# `down` works from what `up` recorded, so it removes exactly what was started.
if [ -f "$state" ]; then
  # shellcheck source=/dev/null
  . "$state"
else
  prefix=${CORRAL_DEMO_PREFIX:-crldemo}
  net=${CORRAL_DEMO_NET:-10.77.0}
  port=${CORRAL_DEMO_PORT:-23790}
  ttl=${CORRAL_DEMO_NODE_TTL:-10s}
  bin=${CORRAL_DEMO_BIN:-}
fi
bridge=${prefix}0
agents=(agent-1 agent-2 agent-3)
servers=(server-a server-b)
etcd_names=(etcd-1 etcd-2 etcd-3)

ns_of() { echo "$prefix-$1"; }            # agent-1 → crldemo-agent-1
ip_of() { echo "$net.$((10 + ${1#agent-}))"; } # agent-1 → 10.77.0.11
server_port() { [ "$1" = server-a ] && echo $((port + 10)) || echo $((port + 11)); }
server_of() {                              # agent-2 → server-b; agents 1 and 3 → server-a
  [ "${1#agent-}" = 2 ] && echo server-b || echo server-a
}
other_server() { [ "$1" = server-a ] && echo server-b || echo server-a; }
# The --server list of an agent: its own server first, then the other, which it moves on to
# when its own cannot be reached (so killing one server fences no node).
servers_of() {
  local first; first=$(server_of "$1")
  echo "https://$net.1:$(server_port "$first"),https://$net.1:$(server_port "$(other_server "$first")")"
}

print_env() {
  cat <<EOF
export PATH="$bin:\$PATH"
export CORRAL_SOCKET=$dir/server-a/run/corral.sock
EOF
}

# Starts "$@" detached (own session), logging to $dir/$name/log; its pid goes to
# $dir/pids/$name (the process writes it itself, then execs).
spawn() {
  local name=$1; shift
  mkdir -p "$dir/$name" "$dir/pids"
  printf '%q ' "$@" >"$dir/$name/cmd" # for `start NAME`
  # shellcheck disable=SC2016 # expanded by that sh, not this one
  setsid sh -c 'echo $$ >"$0"; exec "$@"' "$dir/pids/$name" "$@" \
    </dev/null >>"$dir/$name/log" 2>&1 &
}

wait_for() { # wait_for SECONDS WHAT COMMAND…
  local secs=$1 what=$2; shift 2
  local until=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || die "$what did not happen within ${secs}s (logs: $dir/*/log)"
    sleep 0.2
  done
}

corral() { CORRAL_SOCKET=$dir/server-a/run/corral.sock "$bin/corral" "$@"; }

node_ready() {
  corral node get "$1" -o json |
    jq -e '.status.conditions[]? | select(.type == "Ready" and .status == true)'
}

up() {
  [ "$(id -u)" -eq 0 ] || die "run it as root: it makes network namespaces and links"
  [ ! -f "$state" ] || die "a demo cluster is up already ($state): \`$0 env\` prints its settings, \`$0 down\` removes it"
  [ ${#prefix} -le 7 ] || die "CORRAL_DEMO_PREFIX=$prefix: at most 7 characters (link names are short)"
  [ "${#dir}" -le 40 ] || die "CORRAL_DEMO_DIR=$dir: at most 40 characters (VM socket paths must fit in 107 bytes)"
  ip netns list | grep -q "^$prefix-" && die "namespaces $prefix-* exist already: run \`$0 down\` or pick another CORRAL_DEMO_PREFIX"
  ip link show "$bridge" >/dev/null 2>&1 && die "link $bridge exists already: run \`$0 down\` or pick another CORRAL_DEMO_PREFIX"
  command -v etcd >/dev/null && command -v jq >/dev/null && command -v ip >/dev/null ||
    die "etcd, jq or ip is missing: run scripts/setup.sh"
  if [ -z "$bin" ]; then
    log "building corrald and corral (release)"
    cargo build --quiet --release --locked -p corral-daemon -p corral-cli
    bin=$repo/target/release
  fi
  bin=$(cd "$bin" && pwd)
  [ -x "$bin/corrald" ] && [ -x "$bin/corral" ] || die "no corrald and corral in $bin"

  # A start that fails half-way removes what it made (showing the logs first).
  trap 'st=$?; if [ $st -ne 0 ]; then show_logs; log "start failed: removing what was started"; down; fi' EXIT

  # Searchable, not listable: QEMU runs as corral-qemu and passes through to the VM files.
  mkdir -p "$dir"
  chmod 0711 "$dir"
  cat >"$state" <<EOF
prefix=$prefix
net=$net
port=$port
ttl=$ttl
bin=$bin
EOF

  log "bridge $bridge ($net.1/24) and a namespace per agent"
  ip link add "$bridge" type bridge
  ip addr add "$net.1/24" dev "$bridge"
  ip link set "$bridge" up
  local a n i
  for a in "${agents[@]}"; do
    n=$(ns_of "$a"); i=${a#agent-}
    ip netns add "$n"
    ip link add "$prefix-h$i" type veth peer name "$prefix-n$i"
    ip link set "$prefix-h$i" master "$bridge" up
    ip link set "$prefix-n$i" netns "$n"
    ip -n "$n" link set lo up
    ip -n "$n" link set "$prefix-n$i" name eth0
    ip -n "$n" addr add "$(ip_of "$a")/24" dev eth0
    ip -n "$n" link set eth0 up
    ip -n "$n" route add default via "$net.1"
  done

  log "etcd: 3 members on 127.0.0.1:$port-$((port + 5))"
  local cluster="" e k endpoints=""
  for k in 0 1 2; do
    cluster+="${cluster:+,}${etcd_names[$k]}=http://127.0.0.1:$((port + 3 + k))"
    endpoints+="${endpoints:+,}http://127.0.0.1:$((port + k))"
  done
  for k in 0 1 2; do
    e=${etcd_names[$k]}
    spawn "$e" etcd --name "$e" --data-dir "$dir/$e/data" \
      --listen-client-urls "http://127.0.0.1:$((port + k))" \
      --advertise-client-urls "http://127.0.0.1:$((port + k))" \
      --listen-peer-urls "http://127.0.0.1:$((port + 3 + k))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((port + 3 + k))" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token corral-demo \
      --heartbeat-interval 100 --election-timeout 1000
  done
  echo "endpoints=$endpoints" >>"$state"

  log "cluster CA and the servers' certificate (corrald cluster init)"
  "$bin/corrald" cluster init --data-dir "$dir/ca" --server-name "$net.1" \
    >"$dir/cluster-init.txt"
  local s
  for s in "${servers[@]}"; do
    spawn "$s" "$bin/corrald" --role server --node-name "$s" \
      --store etcd --etcd-endpoints "$endpoints" --node-ttl "$ttl" \
      --data-dir "$dir/$s/data" --run-dir "$dir/$s/run" \
      --listen "$net.1:$(server_port "$s")" --cluster-dir "$dir/ca/cluster" \
      --tls-cert "$dir/ca/cluster/server.crt" --tls-key "$dir/ca/cluster/server.key"
  done
  for s in "${servers[@]}"; do
    wait_for 90 "server $s answering" test -S "$dir/$s/run/corral.sock"
  done
  wait_for 60 "server-a answering" corral node list

  local token
  for a in "${agents[@]}"; do
    log "$a joins $(server_of "$a") from namespace $(ns_of "$a") ($(ip_of "$a"))"
    token=$(corral node join-token --ttl 10m --node "$a" -o json | jq -er .token)
    mkdir -p "$dir/$a"
    chmod 0711 "$dir/$a"
    CORRAL_JOIN_TOKEN=$token spawn "$a" ip netns exec "$(ns_of "$a")" \
      "$bin/corrald" --role agent --node-name "$a" --node-ttl "$ttl" \
      --server "$(servers_of "$a")" \
      --migration-address "$(ip_of "$a")" \
      --storage-pool "shared=$dir/pool:shared" \
      --data-dir "$dir/$a/data" --run-dir "$dir/$a/run"
  done
  for a in "${agents[@]}"; do
    wait_for 120 "node $a Ready" node_ready "$a"
  done
  log "every node is Ready:"
  corral node list >&2
  cat >&2 <<EOF

Try it (after the exports below):
  corral vm create web --kernel $repo/target/guest/x86_64/vmlinuz \\
    --initrd $repo/target/guest/x86_64/initrd.img --cmdline "console=ttyS0 quiet" \\
    --memory 256M --restart always --wait
  corral vm get web -o json | jq .status.node
  kill -9 the agent running it (pids in $dir/pids/), and watch it come up elsewhere
  corral volume create data --size 1G --pool shared   # $dir/pool: the agents' shared pool
  corral vm create db … --volume data --restart always --wait   # moves and fails over too
  $0 down   # removes everything
EOF
  print_env
}

show_logs() {
  local f
  for f in "$dir"/*/log; do
    [ -f "$f" ] || continue
    printf -- '--- %s\n' "$f" >&2
    tail -n 15 "$f" >&2
  done
}

# Kills process $1 if it is one of the demo's — corrald, etcd, QEMU or virtiofsd with the
# demo directory in its command line — so that a pid reused by something else, or a
# `tail -f` of a demo log, is left alone.
kill_ours() {
  local pid=$1 argv
  argv=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline") || return 0
  case "$(basename -- "$(head -n 1 <<<"$argv")")" in
    corrald | etcd | qemu-system-* | virtiofsd) ;;
    *) return 0 ;;
  esac
  if grep -qF -- "$dir/" <<<"$argv"; then
    kill -9 "$pid" 2>/dev/null || true
  fi
}

down() {
  [ "$(id -u)" -eq 0 ] || die "run it as root: it removes network namespaces and links"
  local a n pid f uid
  # Everything in the agents' namespaces first: agents, their fence guards and QEMUs.
  for a in "${agents[@]}"; do
    n=$(ns_of "$a")
    if ip netns list | grep -q "^$n\b"; then
      for pid in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    fi
  done
  for f in "$dir"/pids/*; do
    [ -f "$f" ] && kill_ours "$(cat "$f")"
  done
  # Anything else still naming the demo directory (a QEMU or guard left by a crash).
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    [ "$pid" != $$ ] && kill_ours "$pid"
  done
  for a in "${agents[@]}"; do
    n=$(ns_of "$a")
    ip netns list | grep -q "^$n\b" && ip netns del "$n"
    # The guest RAM files of introspectable VMs.
    for f in "$dir/$a/run/vms"/*; do
      [ -d "$f" ] || continue
      uid=$(basename "$f")
      rm -f "/dev/shm/corral-$uid".*
    done
  done
  ip link show "$bridge" >/dev/null 2>&1 && ip link del "$bridge"
  # Give killed processes a moment to release files, then remove them.
  sleep 0.2
  rm -rf "$dir"
  log "demo cluster removed ($dir, namespaces $prefix-*, bridge $bridge)"
}

running() { # running NAME: its recorded process is alive
  local pid
  pid=$(cat "$dir/pids/$1" 2>/dev/null) && [ -d "/proc/$pid" ] &&
    ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}

start_again() {
  local name=$1
  [ -f "$dir/$name/cmd" ] || die "no $name in this demo cluster (etcd-1..3, server-a, server-b, agent-1..3)"
  running "$name" && die "$name runs already (pid $(cat "$dir/pids/$name"))"
  eval "spawn \"\$name\" $(cat "$dir/$name/cmd")"
  log "$name started again (log: $dir/$name/log)"
}

link_of() { # link_of agent-N: the host end of its veth
  case "$1" in
    agent-[123]) echo "$prefix-h${1#agent-}" ;;
    *) die "cut and heal take agent-1, agent-2 or agent-3, not $1" ;;
  esac
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  start)
    [ -f "$state" ] || die "no demo cluster is up ($state)"
    start_again "${2:?start NAME}"
    ;;
  cut)
    [ -f "$state" ] || die "no demo cluster is up ($state)"
    ip link set "$(link_of "${2:?cut agent-N}")" down
    log "${2} cut off: its reports stop reaching the servers"
    ;;
  heal)
    [ -f "$state" ] || die "no demo cluster is up ($state)"
    ip link set "$(link_of "${2:?heal agent-N}")" up
    log "${2} connected again"
    ;;
  env)
    [ -f "$state" ] || die "no demo cluster is up ($state)"
    print_env
    ;;
  *) die "usage: $0 [up|env|down|start NAME|cut agent-N|heal agent-N]" ;;
esac
