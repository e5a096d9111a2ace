#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (controller and compute node on loopback), for the SLURM
# integration test tests/benchmark/test_slurm.py and for trying the jobs of `benchmark --emit slurm` locally.
#
#   bash scripts/slurm_local_cluster.sh [start]   install (apt-get) and start it; waits until the node is idle
#   bash scripts/slurm_local_cluster.sh status    exit 0 when it is up (our config, node responding), else 1
#   bash scripts/slurm_local_cluster.sh stop      stop the daemons this script started (packages stay installed)
#
# Needs root and, for the first start, apt-get (Debian's slurmctld slurmd slurm-client munge; SLURM 22.05).
# Idempotent: `start` with the cluster up only confirms it. It never touches a real cluster: an existing
# /etc/slurm/slurm.conf that this script did not write is refused. Exit codes: 0 up/stopped, 1 failed, 2 refused.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARKER="# nnunet-poolskip local test cluster: written by scripts/slurm_local_cluster.sh"
RUN_DIR=/run/nnunet-poolskip-slurm          # our pid files
MUNGE_KEY=/etc/munge/munge.key
LOG_DIR=/var/log/slurm
STATE_DIR=/var/lib/slurm
declare -A PACKAGES=([slurmctld]=slurmctld [slurmd]=slurmd [slurm-client]=sbatch [munge]=munged)
WAIT_S=${SLURM_LOCAL_WAIT_S:-90}

say() { echo "[slurm-local] $*"; }
die() { echo "[slurm-local] error: $1" >&2; exit "${2:-1}"; }

host() { hostname -s; }

our_config() { [[ -f $CONF ]] && [[ "$(head -n 1 "$CONF")" == "$MARKER" ]]; }

refuse_foreign_config() {
    if [[ -n "${SLURM_CONF:-}" && "$SLURM_CONF" != "$CONF" ]]; then
        die "SLURM_CONF=$SLURM_CONF points at another SLURM configuration; this script only manages $CONF (unset SLURM_CONF to use it)" 2
    fi
    local other
    for other in "$CONF" /etc/slurm-llnl/slurm.conf; do
        if [[ -e $other ]] && ! { [[ $other == "$CONF" ]] && our_config; }; then
            die "$other exists and was not written by this script: this machine has a SLURM configuration of its own; not touching it" 2
        fi
    done
}

# pid of a daemon from its pid file, if that process is alive and is that daemon
running_pid() {  # running_pid PIDFILE NAME
    local pid
    [[ -r $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/comm ]] && [[ "$(</proc/$pid/comm)" == "$2" ]] && echo "$pid"
}

node_state() { sinfo --noheader --nodes="$(host)" --format=%T 2>/dev/null | head -n 1; }

node_up() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; }

write_config() {
    local cpus memory
    cpus=$(nproc)
    # the memory slurmd itself detects: a larger RealMemory would drain the node ("Low RealMemory")
    memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    [[ -n $memory ]] || die "slurmd -C did not report RealMemory"
    local new
    new=$(cat <<EOF
$MARKER
# (single node, loopback only). Delete this file to let the script rewrite it; it refuses any other slurm.conf.
ClusterName=poolskip-local
SlurmctldHost=$(host)(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# no accounting database here: finished jobs stay visible to "scontrol show job" for an hour instead
MinJobAge=3600
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
NodeName=$(host) NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=$(host) Default=YES MaxTime=INFINITE State=UP
EOF
)
    if [[ -f $CONF ]] && [[ "$(cat "$CONF")" == "$new" ]]; then
        return 1  # unchanged
    fi
    mkdir -p "$(dirname "$CONF")"
    printf '%s\n' "$new" > "$CONF.tmp.$$"
    chmod 644 "$CONF.tmp.$$"
    mv -f "$CONF.tmp.$$" "$CONF"
    say "wrote $CONF (node $(host): $cpus CPUs, $memory MB)"
}

install_packages() {
    local missing=() p
    for p in "${!PACKAGES[@]}"; do  # package -> a command it installs
        command -v "${PACKAGES[$p]}" >/dev/null || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null || die "SLURM is not installed and apt-get is not available: install ${missing[*]} (SLURM >= 22.05) yourself"
    say "installing ${missing[*]} with apt-get"
    local log=/tmp/slurm_local_cluster.apt.$$.log
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${missing[@]}"; } >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        die "apt-get could not install ${missing[*]} (full output: $log)"
    fi
    rm -f "$log"
}

munge_key() {
    if [[ ! -s $MUNGE_KEY ]]; then
        mkdir -p "$(dirname "$MUNGE_KEY")"
        dd if=/dev/urandom of="$MUNGE_KEY.tmp.$$" bs=1024 count=1 status=none
        chown munge:munge "$MUNGE_KEY.tmp.$$"
        chmod 400 "$MUNGE_KEY.tmp.$$"
        mv -f "$MUNGE_KEY.tmp.$$" "$MUNGE_KEY"
        say "wrote a new munge key $MUNGE_KEY"
    fi  # an existing key (e.g. the one Debian's munge package generates) is kept: other munge users may rely on it
}

start_daemons() {
    mkdir -p "$RUN_DIR" "$LOG_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
    if ! pid=$(running_pid /run/munge/munged.pid munged); then
        install -d -o munge -g munge -m 755 /run/munge
        install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
        runuser -u munge -- /usr/sbin/munged
        running_pid /run/munge/munged.pid munged > "$RUN_DIR/munged.started" || die "munged did not start (see /var/log/munge/munged.log)"
        say "started munged (pid $(<"$RUN_DIR/munged.started"))"
    fi
    if ! running_pid "$RUN_DIR/slurmctld.pid" slurmctld >/dev/null; then
        slurmctld || die "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
        say "started slurmctld"
    fi
    if ! running_pid "$RUN_DIR/slurmd.pid" slurmd >/dev/null; then
        slurmd || die "slurmd did not start (see $LOG_DIR/slurmd.log)"
        say "started slurmd"
    fi
}

stop_one() {  # stop_one PIDFILE NAME
    local pid i
    pid=$(running_pid "$1" "$2") || return 0
    kill "$pid"
    for ((i = 0; i < 100; i++)); do
        [[ -d /proc/$pid ]] || { say "stopped $2 (pid $pid)"; return 0; }
        sleep 0.1
    done
    die "$2 (pid $pid) did not stop within 10 s"
}

stop_daemons() {
    stop_one "$RUN_DIR/slurmd.pid" slurmd
    stop_one "$RUN_DIR/slurmctld.pid" slurmctld
    if [[ -f $RUN_DIR/munged.started ]]; then  # only a munged this script started
        if [[ "$(running_pid /run/munge/munged.pid munged || true)" == "$(<"$RUN_DIR/munged.started")" ]]; then
            stop_one /run/munge/munged.pid munged
        fi
        rm -f "$RUN_DIR/munged.started"
    fi
}

wait_for_node() {
    local deadline=$((SECONDS + WAIT_S)) state
    while ((SECONDS < deadline)); do
        state=$(node_state || true)
        if [[ $state =~ ^(idle|mixed|allocated|completing)$ ]]; then
            say "up: node $(host) $state ($(nproc) CPUs, partition local), config $CONF"
            return 0
        fi
        sleep 1
    done
    echo "[slurm-local] error: node $(host) not idle after ${WAIT_S} s (state: '${state:-no answer from slurmctld}')" >&2
    sinfo -R >&2 2>&1 || true
    tail -n 5 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 2>/dev/null || true
    exit 1
}

cmd=${1:-start}
case "$cmd" in
    start)
        [[ $EUID -eq 0 ]] || die "must run as root (it installs packages and starts slurmctld, slurmd, munged)" 2
        refuse_foreign_config
        install_packages
        munge_key
        if write_config && { running_pid "$RUN_DIR/slurmctld.pid" slurmctld || running_pid "$RUN_DIR/slurmd.pid" slurmd; } >/dev/null; then
            say "configuration changed: restarting the daemons"
            stop_one "$RUN_DIR/slurmd.pid" slurmd
            stop_one "$RUN_DIR/slurmctld.pid" slurmctld
        fi
        start_daemons
        wait_for_node
        ;;
    status)
        our_config || { say "down: no $CONF written by this script"; exit 1; }
        running_pid "$RUN_DIR/slurmctld.pid" slurmctld >/dev/null || { say "down: slurmctld not running"; exit 1; }
        running_pid "$RUN_DIR/slurmd.pid" slurmd >/dev/null || { say "down: slurmd not running"; exit 1; }
        node_up || { say "down: node $(host) is '$(node_state || true)'"; exit 1; }
        say "up: node $(host) $(node_state)"
        ;;
    stop)
        [[ $EUID -eq 0 ]] || die "must run as root" 2
        our_config || die "no $CONF written by this script: nothing of ours to stop" 2
        stop_daemons
        say "stopped"
        ;;
    *)
        die "usage: $0 [start|status|stop]" 2
        ;;
esac
