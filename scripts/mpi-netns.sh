#!/usr/bin/env bash
# Several "hosts" on one machine: runs an MPI job of `resnet` (built with --features mpi)
# across 2 to 4 network namespaces joined by veth pairs to a bridge in a namespace of its
# own, each host's link shaped by tc netem (rate and delay), Open MPI over TCP on the
# namespaces' own addresses (10.77.0.1 ...), its launcher reaching every namespace through
# a plm_rsh_agent wrapper that runs `ip netns exec`. Nothing outside the namespaces is
# touched, and everything is removed on exit. Needs root, iproute2 (ip, tc) and Open MPI.
# Kernels without the netem qdisc (sch_netem) get the rate from a token bucket (tbf)
# instead, and no added delay.
#
#   scripts/mpi-netns.sh [-n HOSTS] [-r RATE] [-d DELAY] [-t SECONDS] [-b RESNET] -- ARGS...
#
# runs `mpirun -np HOSTS RESNET ARGS...`, one rank per host, bounded by SECONDS (default
# 300). RATE is a tc rate (10gbit, default; `none` for an unshaped link), DELAY a one-way
# delay added on each host's egress (default 0; e.g. 50us). Examples:
#
#   scripts/mpi-netns.sh -n 2 -r 1gbit -- mpi-bench --max-bytes 4194304
#   scripts/mpi-netns.sh -n 4 -r 10gbit -d 50us -- train --model resnet8 --data DIR --iters 20 --threads 1
set -euo pipefail

HOSTS=2 RATE=10gbit DELAY=0 LIMIT=300
RESNET="$(cd "$(dirname "$0")/.." && pwd)/target/release/resnet"
[ -n "${CARGO_TARGET_DIR:-}" ] && RESNET="$CARGO_TARGET_DIR/release/resnet"
while getopts "n:r:d:t:b:h" opt; do
  case $opt in
    n) HOSTS=$OPTARG ;;
    r) RATE=$OPTARG ;;
    d) DELAY=$OPTARG ;;
    t) LIMIT=$OPTARG ;;
    b) RESNET=$OPTARG ;;
    *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
if [ $# -eq 0 ]; then echo "error: give the resnet arguments after --" >&2; exit 2; fi
if [ "$(id -u)" != 0 ]; then echo "error: network namespaces need root" >&2; exit 2; fi
if ! [[ $HOSTS =~ ^[2-4]$ ]]; then echo "error: -n takes 2 to 4 hosts, found $HOSTS" >&2; exit 2; fi
if [ ! -x "$RESNET" ]; then
  echo "error: no resnet binary at $RESNET (cargo build --release --features mpi, or -b PATH)" >&2
  exit 2
fi
for tool in ip tc mpirun timeout; do
  command -v $tool >/dev/null || { echo "error: $tool is missing (iproute2, openmpi-bin)" >&2; exit 2; }
done

# Whether the kernel has netem (a throwaway namespace tries it).
probe="rnp$$"
ip netns add "$probe"
ip -n "$probe" link add name pa type veth peer name pb
NETEM=no
ip netns exec "$probe" tc qdisc add dev pa root netem delay 1ms 2>/dev/null && NETEM=yes
ip netns del "$probe"
if [ "$NETEM" = no ] && [ "$DELAY" != 0 ]; then
  echo "error: this kernel has no netem qdisc (sch_netem), which -d needs; only -r works here" >&2
  exit 2
fi
BURST=65536
if [ "$RATE" != none ]; then
  if ! [[ $RATE =~ ^([0-9]+)(k|m|g)?bit$ ]]; then
    echo "error: -r takes a rate like 100mbit, 10gbit or none, found $RATE" >&2
    exit 2
  fi
  case ${BASH_REMATCH[2]} in k) mult=1000 ;; m) mult=1000000 ;; g) mult=1000000000 ;; *) mult=1 ;; esac
  bits=$((BASH_REMATCH[1] * mult))
  [ $((bits / 8000)) -gt $BURST ] && BURST=$((bits / 8000))
fi

# Names unique to this run, so that two runs never share namespaces.
TAG="rn$$"
SWITCH="$TAG-sw"
WORK=$(mktemp -d)
cleanup() {
  for i in $(seq 1 "$HOSTS"); do ip netns del "$TAG-h$i" 2>/dev/null || true; done
  ip netns del "$SWITCH" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$SWITCH"
ip -n "$SWITCH" link add br0 type bridge
ip -n "$SWITCH" link set br0 up
HOSTLIST=()
for i in $(seq 1 "$HOSTS"); do
  ns="$TAG-h$i"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  # One veth pair per host: eth0 in the host, its peer on the switch's bridge.
  ip link add "$TAG-e$i" netns "$ns" type veth peer name "p$i" netns "$SWITCH"
  ip -n "$ns" link set "$TAG-e$i" name eth0
  ip -n "$ns" addr add "10.77.0.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$SWITCH" link set "p$i" master br0
  ip -n "$SWITCH" link set "p$i" up
  if [ "$NETEM" = yes ] && { [ "$RATE" != none ] || [ "$DELAY" != 0 ]; }; then
    shape=()
    [ "$DELAY" != 0 ] && shape+=(delay "$DELAY")
    # netem's rate needs a queue long enough for a whole bucket at that rate.
    [ "$RATE" != none ] && shape+=(rate "$RATE" limit 100000)
    ip netns exec "$ns" tc qdisc add dev eth0 root netem "${shape[@]}"
  elif [ "$RATE" != none ]; then
    # A token bucket refilled at the rate, holding 1 ms of it (at least 64 kB).
    ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$RATE" burst "$BURST" latency 50ms
  fi
  HOSTLIST+=("10.77.0.$i")
done

# The launcher's remote shell: `agent HOST COMMAND...` runs COMMAND in HOST's namespace.
cat > "$WORK/agent" <<EOF
#!/usr/bin/env bash
host=\$1; shift
# Options an rsh-like agent may get before the host (none expected, skipped if given).
while [ "\${host#-}" != "\$host" ]; do host=\$1; shift; done
exec ip netns exec "$TAG-h\${host##*.}" /bin/sh -c "\$*"
EOF
chmod +x "$WORK/agent"

hosts=$(IFS=,; echo "${HOSTLIST[*]/%/:1}")
echo "$HOSTS hosts ${HOSTLIST[*]}, links $RATE ($([ "$NETEM" = yes ] && echo netem || echo tbf)), delay $DELAY; mpirun -np $HOSTS $RESNET $*" >&2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
status=0
ip netns exec "$TAG-h1" timeout -k 10 "$LIMIT" mpirun -np "$HOSTS" --host "$hosts" --bind-to none \
  --mca plm_rsh_agent "$WORK/agent" --mca plm_rsh_no_tree_spawn 1 \
  --mca btl tcp,self --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
  "$RESNET" "$@" || status=$?
exit $status
