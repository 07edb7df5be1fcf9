#!/usr/bin/env bash
# A real single-node SLURM 22.05 for the test suite (NOT for users): controller, compute node,
# accounting (slurmdbd + MariaDB) and 4 fake GPUs that SLURM schedules.
#
#   scripts/test_slurm.sh start  [STATE_DIR]   # install if missing, start, wait until the node is idle
#   scripts/test_slurm.sh stop   [STATE_DIR]   # stop the daemons this script started (by PID file)
#   scripts/test_slurm.sh status [STATE_DIR]   # which daemons run, and sinfo
#
# Multi-node mode (its own cluster next to the single-node one; see "multi-node mode" below):
#   scripts/test_slurm.sh multinode start|stop|status [STATE_DIR]        # default /tmp/cloudsweep-slurm-multinode
#   scripts/test_slurm.sh multinode kill-node|start-node|link-down|link-up NODE [STATE_DIR]
#
# Needs root on Debian 12 (apt-get, mknod, /etc/slurm). Idempotent: `start` on a running cluster
# only checks it. Daemons are started directly (no systemd in CI sandboxes) and stopped only through
# their PID files, never by name. Facts behind each setting: ../shared/notes/slurm-on-one-machine.md.
#
# The cluster: name `cloudsweep`, partition `debug` (the `local` profile of jobs/slurm.yaml), one node
# (this host's short name) declaring 8 CPUs and gpu:4 (character devices <STATE_DIR>/dev/nvidia0..3).
set -euo pipefail

MODE=single
if [[ "${1:-}" == multinode ]]; then MODE=multi; shift; fi
ACTION="${1:-}"
NODE_ARG=""
if [[ "$MODE" == multi && "$ACTION" =~ ^(kill-node|start-node|link-down|link-up)$ ]]; then
    NODE_ARG="${2:-}"
    shift
fi
if [[ "$MODE" == multi ]]; then
    STATE_DIR="${2:-${CLOUDSWEEP_MULTINODE_STATE:-/tmp/cloudsweep-slurm-multinode}}"
else
    STATE_DIR="${2:-${CLOUDSWEEP_SLURM_STATE:-/tmp/cloudsweep-slurm}}"
fi
CLUSTER=cloudsweep
PARTITION=debug
NODE_CPUS=8
FAKE_GPUS=4
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=cloudsweep-test-only
CONF_DIR=/etc/slurm
MYSQL_SOCKET=/run/mysqld/mysqld.sock
MUNGE_PID=/run/munge/munged.pid   # munged writes it as user munge, so it lives in munge's folder
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

log() { printf '[test_slurm] %s\n' "$*"; }
die() { printf '[test_slurm] error: %s\n' "$*" >&2; exit 1; }

usage() {
    echo "usage: $0 {start|stop|status} [STATE_DIR]  (default STATE_DIR: /tmp/cloudsweep-slurm)" >&2
    echo "       $0 multinode {start|stop|status} [STATE_DIR]  (default: /tmp/cloudsweep-slurm-multinode)" >&2
    echo "       $0 multinode {kill-node|start-node|link-down|link-up} NODE [STATE_DIR]" >&2
    exit 2
}

# ---- process helpers ---------------------------------------------------------------------------
# A PID file counts only when its process is alive AND is the expected program (PIDs get reused).
pid_alive() {  # pid_alive PIDFILE NAME
    local pidfile="$1" name="$2" pid comm
    [[ -s "$pidfile" ]] || return 1
    pid="$(tr -dc '0-9' < "$pidfile")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    [[ "$comm" == "$name"* ]]
}

stop_pidfiles() {  # stop_pidfiles PIDFILE:NAME ... (SIGTERM to all at once, then wait for each)
    local entry pidfile name pid
    local -a waiting=()
    for entry in "$@"; do
        pidfile="${entry%%:*}" name="${entry#*:}"
        if ! pid_alive "$pidfile" "$name"; then
            rm -f "$pidfile"
            continue
        fi
        pid="$(tr -dc '0-9' < "$pidfile")"
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        waiting+=("$pid:$name:$pidfile")
    done
    for entry in "${waiting[@]}"; do
        pid="${entry%%:*}" name="$(cut -d: -f2 <<<"$entry")" pidfile="${entry#*:*:}"
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not stop in 10 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.3
    done
}

# squeue on every poll (a "$(squeue)" argument to wait_for would run once, when the line is read).
queue_empty() { [[ -z "$(squeue -h -o %A 2>/dev/null)" ]]; }

# ---- install -----------------------------------------------------------------------------------
install_packages() {
    local missing=()
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and no apt-get: this script needs Debian 12"
    log "installing ${missing[*]} (apt-get; about 20 s)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    # The packages try to start their services; policy-rc.d refuses in containers (harmless).
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$STATE_DIR/log/apt.log" 2>&1 \
        || { tail -20 "$STATE_DIR/log/apt.log" >&2; die "apt-get install failed (log: $STATE_DIR/log/apt.log)"; }
}

# ---- configuration -----------------------------------------------------------------------------
host_short() { hostname -s; }

fix_hosts() {
    local host
    host="$(host_short)"
    if ! getent hosts "$host" >/dev/null; then
        log "adding '127.0.0.1 $host' to /etc/hosts (the short host name did not resolve)"
        echo "127.0.0.1 $host" >> /etc/hosts
    fi
}

make_fake_gpus() {
    mkdir -p "$STATE_DIR/dev"
    for index in $(seq 0 $((FAKE_GPUS - 1))); do
        local device="$STATE_DIR/dev/nvidia$index"
        # Character devices (major 195 like NVIDIA's): with plain files SLURM schedules the GPUs
        # but does not set CUDA_VISIBLE_DEVICES.
        if [[ ! -c "$device" ]]; then
            rm -f "$device"
            mknod "$device" c 195 "$index" || die "mknod $device failed (needs root and a filesystem that allows device nodes)"
        fi
    done
}

write_configs() {
    local host memory
    host="$(host_short)"
    memory="$(slurmd -C | tr ' ' '\n' | sed -n 's/^RealMemory=//p')"
    [[ -n "$memory" ]] || die "slurmd -C printed no RealMemory"
    mkdir -p "$CONF_DIR"
    cat > "$CONF_DIR/slurm.conf" <<EOF
# Written by cloudsweep scripts/test_slurm.sh: a single-node TEST cluster. Do not use in production.
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job otherwise waits about 2 minutes in PENDING (BeginTime) for its credential to expire.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$STATE_DIR/pids/slurmctld.pid
SlurmdPidFile=$STATE_DIR/pids/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in CI sandboxes.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Schedule within ~2 s so tests stay short.
SchedulerParameters=bf_interval=2,sched_interval=2
KillWait=5
MinJobAge=300
ReturnToService=2
# Job arrays of at most 4 tasks (indices 0..3), so that a W&B sweep's agent array of more is split
# (tests/launch/test_slurm.py); no other test submits an array of more than one task here.
MaxArraySize=4
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$host
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none
# Let the node declare more CPUs than the machine has, so several 1-CPU jobs run at once.
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$memory Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    cat > "$CONF_DIR/gres.conf" <<EOF
# Written by cloudsweep scripts/test_slurm.sh: fake GPUs (character devices) for the test cluster.
AutoDetect=off
NodeName=$host Name=gpu File=$STATE_DIR/dev/nvidia[0-$((FAKE_GPUS - 1))]
EOF
    cat > "$CONF_DIR/slurmdbd.conf" <<EOF
# Written by cloudsweep scripts/test_slurm.sh (test cluster accounting).
DbdHost=localhost
SlurmUser=root
AuthType=auth/munge
PidFile=$STATE_DIR/pids/slurmdbd.pid
LogFile=$STATE_DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=$DB_NAME
StorageUser=$DB_USER
StoragePass=$DB_PASS
EOF
    # slurmdbd refuses a config readable by others, or not owned by its SlurmUser.
    chown root:root "$CONF_DIR/slurmdbd.conf"
    chmod 600 "$CONF_DIR/slurmdbd.conf"
}

# ---- daemons, in order ---------------------------------------------------------------------------
start_munge() {
    if pid_alive "$MUNGE_PID" munged; then return 0; fi
    log "starting munged"
    mkdir -p /run/munge
    chown munge:munge /run/munge
    chmod 755 /run/munge
    [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key is missing (the munge package creates it)"
    # --force: a killed munged leaves its socket behind.
    runuser -u munge -- /usr/sbin/munged --force --pid-file="$MUNGE_PID" \
        || die "munged did not start (see /var/log/munge/munged.log)"
    wait_for 10 munge munge -n || die "munge does not answer"
}

start_mariadb() {
    local pidfile="$STATE_DIR/mariadb-run/mariadb.pid"
    # mariadbd runs as user mysql: its PID file and log go in a folder that user owns.
    mkdir -p "$STATE_DIR/mariadb-run"
    chown mysql:mysql "$STATE_DIR/mariadb-run"
    if ! pid_alive "$pidfile" mariadbd; then
        if [[ ! -d "$STATE_DIR/mysql/mysql" ]]; then
            log "initialising MariaDB data in $STATE_DIR/mysql"
            mkdir -p "$STATE_DIR/mysql"
            chown mysql:mysql "$STATE_DIR/mysql"
            mariadb-install-db --user=mysql --datadir="$STATE_DIR/mysql" --skip-test-db \
                --auth-root-authentication-method=socket >"$STATE_DIR/log/mariadb-install.log" 2>&1 \
                || die "mariadb-install-db failed (log: $STATE_DIR/log/mariadb-install.log)"
        fi
        log "starting mariadbd (socket only, no network)"
        mkdir -p /run/mysqld
        chown mysql:mysql /run/mysqld
        setsid /usr/sbin/mariadbd --user=mysql --datadir="$STATE_DIR/mysql" --skip-networking \
            --socket="$MYSQL_SOCKET" --pid-file="$pidfile" --log-error="$STATE_DIR/mariadb-run/mariadb.log" \
            --innodb-buffer-pool-size=32M </dev/null >>"$STATE_DIR/log/mariadb-stdout.log" 2>&1 &
    fi
    wait_for 30 mariadb mariadb-admin --socket="$MYSQL_SOCKET" ping \
        || die "MariaDB did not come up (log: $STATE_DIR/mariadb-run/mariadb.log)"
    mariadb --socket="$MYSQL_SOCKET" -e "
        CREATE DATABASE IF NOT EXISTS $DB_NAME;
        CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';" \
        || die "could not create the accounting database"
}

start_slurmdbd() {
    if ! pid_alive "$STATE_DIR/pids/slurmdbd.pid" slurmdbd; then
        log "starting slurmdbd"
        /usr/sbin/slurmdbd || die "slurmdbd did not start (log: $STATE_DIR/log/slurmdbd.log)"
    fi
    wait_for 30 slurmdbd sacctmgr -n list cluster \
        || die "slurmdbd does not answer (log: $STATE_DIR/log/slurmdbd.log)"
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        log "adding cluster $CLUSTER to accounting"
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster $CLUSTER failed"
    fi
}

start_slurmctld() {
    if pid_alive "$STATE_DIR/pids/slurmctld.pid" slurmctld; then return 0; fi
    log "starting slurmctld"
    mkdir -p "$STATE_DIR/slurmctld"
    # -i: ignore state files from an earlier config (a test cluster has nothing worth keeping).
    /usr/sbin/slurmctld -i || die "slurmctld did not start (log: $STATE_DIR/log/slurmctld.log)"
    wait_for 30 slurmctld scontrol ping \
        || die "slurmctld does not answer (log: $STATE_DIR/log/slurmctld.log)"
}

start_slurmd() {
    if pid_alive "$STATE_DIR/pids/slurmd.pid" slurmd; then return 0; fi
    log "starting slurmd"
    mkdir -p "$STATE_DIR/slurmd"
    /usr/sbin/slurmd || die "slurmd did not start (log: $STATE_DIR/log/slurmd.log)"
}

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -1; }

wait_node_idle() {
    local host deadline state
    host="$(host_short)"
    deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
        state="$(node_state)"
        case "$state" in
            idle|mixed|allocated|completing) log "node $host is $state: cluster ready (partition $PARTITION)"; return 0 ;;
            down*|drain*|*fail*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    die "node $host is '$(node_state)' after 60 s, not idle (logs: $STATE_DIR/log/)"
}

start() {
    [[ "$(id -u)" == 0 ]] || die "must run as root (apt-get, mknod, /etc/slurm)"
    [[ -r /etc/debian_version ]] || die "needs Debian (found no /etc/debian_version)"
    mkdir -p "$STATE_DIR"/{log,pids}
    chmod 755 "$STATE_DIR"   # mariadbd runs as user mysql and must reach its data folder
    install_packages
    fix_hosts
    make_fake_gpus
    local previous=""
    [[ -f "$CONF_DIR/slurm.conf" ]] && previous="$(md5sum < "$CONF_DIR/slurm.conf")"
    write_configs
    if [[ -n "$previous" && "$previous" != "$(md5sum < "$CONF_DIR/slurm.conf")" ]] \
        && pid_alive "$STATE_DIR/pids/slurmctld.pid" slurmctld; then
        die "a running cluster uses a different /etc/slurm/slurm.conf: run '$0 stop' first"
    fi
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    wait_node_idle
}

stop() {
    # Jobs first (a test cluster has nothing worth keeping), so no slurmstepd outlives slurmd.
    if pid_alive "$STATE_DIR/pids/slurmctld.pid" slurmctld; then
        local jobs
        jobs="$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')"
        if [[ -n "${jobs// }" ]]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            wait_for 15 "jobs to end" queue_empty || log "jobs still listed after 15 s"
        fi
    fi
    # SLURM's daemons together, then what they use (accounting database, munge).
    stop_pidfiles "$STATE_DIR/pids/slurmd.pid:slurmd" "$STATE_DIR/pids/slurmctld.pid:slurmctld"
    stop_pidfiles "$STATE_DIR/pids/slurmdbd.pid:slurmdbd"
    stop_pidfiles "$STATE_DIR/mariadb-run/mariadb.pid:mariadbd"
    # munged is shared with the multi-node clusters: stopping it under a running one takes all its
    # nodes down (every RPC fails authentication), so it stays while any of them runs.
    local other
    for other in "${CLOUDSWEEP_MULTINODE_STATE:-/tmp/cloudsweep-slurm-multinode}" /tmp/cloudsweep-slurm-*; do
        if [[ "$other" != "$STATE_DIR" ]] && pid_alive "$other/pids/slurmctld.pid" slurmctld; then
            log "munged left running: the multi-node cluster in $other uses it"
            log "stopped"
            return 0
        fi
    done
    stop_pidfiles "$MUNGE_PID:munged"
    log "stopped"
}

status() {
    local code=0
    for entry in "munged:$MUNGE_PID" "mariadbd:$STATE_DIR/mariadb-run/mariadb.pid" \
                 "slurmdbd:$STATE_DIR/pids/slurmdbd.pid" "slurmctld:$STATE_DIR/pids/slurmctld.pid" \
                 "slurmd:$STATE_DIR/pids/slurmd.pid"; do
        local name="${entry%%:*}" pidfile="${entry#*:}"
        if pid_alive "$pidfile" "$name"; then
            printf '%-10s running (pid %s)\n' "$name" "$(tr -dc '0-9' < "$pidfile")"
        else
            printf '%-10s stopped\n' "$name"
            code=1
        fi
    done
    if ((code == 0)); then sinfo; fi
    return $code
}

# ==== multi-node mode ============================================================================
# A second, separate cluster (`cloudsweepmn`, partition `debug`) next to the single-node one: the
# controller, slurmdbd and its own MariaDB in the host's network namespace, and NODES compute nodes,
# each one `slurmd -N nodeK` in its own network namespace with its own address on a private bridge
# (Debian's SLURM is not built with multiple-slurmd). Nothing of the single-node cluster is touched:
# own config folder (SLURM_CONF=<STATE_DIR>/etc/slurm.conf, never /etc/slurm), own ports, own MariaDB
# (TCP on 127.0.0.1 only, own data folder and socket); munged is shared. Only addresses on the bridge
# and in the namespaces this script creates are used; nothing else is contacted.
# Facts behind each choice: ../shared/notes/slurm-multinode.md. Tunables (environment):
MN_NODES="${CLOUDSWEEP_MULTINODE_NODES:-3}"        # compute nodes node1..nodeN (at most 9)
MN_TAG="${CLOUDSWEEP_MULTINODE_TAG:-csmn}"         # prefix of the bridge, namespaces, veths (<= 8 chars)
MN_SUBNET="${CLOUDSWEEP_MULTINODE_SUBNET:-10.213.0}"  # /24: bridge .1, nodeK .1K
MN_PORT="${CLOUDSWEEP_MULTINODE_PORT:-6827}"       # slurmctld; slurmd +1, slurmdbd +2, MariaDB +3
MN_CLUSTER=cloudsweepmn
MN_GPUS_PER_NODE=2
MN_NODE_CPUS=2
MN_NODE_MEMORY_MB=4096   # declared (config_overrides): two 2 GB jobs per node

mn_bridge() { echo "$MN_TAG-br"; }
mn_netns() { echo "$MN_TAG-$1"; }               # mn_netns node2 -> csmn-node2
mn_veth() { echo "$MN_TAG-v${1#node}"; }        # host end of nodeK's link
mn_node_addr() { echo "$MN_SUBNET.1${1#node}"; }
mn_nodes() { seq -f 'node%g' 1 "$MN_NODES"; }
mn_conf() { echo "$STATE_DIR/etc/slurm.conf"; }
mn_mysql_socket() { echo "$STATE_DIR/mariadb-run/mysqld.sock"; }

mn_check_node() {
    [[ "$1" =~ ^node[1-9]$ ]] && ((${1#node} <= MN_NODES)) || die "no node '$1' (nodes: $(mn_nodes | tr '\n' ' '))"
}

mn_network_up() {
    local bridge node ns veth
    bridge="$(mn_bridge)"
    if ! ip link show "$bridge" >/dev/null 2>&1; then
        log "creating bridge $bridge ($MN_SUBNET.1/24)"
        ip link add "$bridge" type bridge || die "cannot create a bridge (needs root and CAP_NET_ADMIN)"
        ip addr add "$MN_SUBNET.1/24" dev "$bridge"
    fi
    ip link set "$bridge" up
    for node in $(mn_nodes); do
        ns="$(mn_netns "$node")" veth="$(mn_veth "$node")"
        if [[ ! -e "/run/netns/$ns" ]]; then
            ip netns add "$ns" || die "cannot create network namespace $ns"
        fi
        if ! ip link show "$veth" >/dev/null 2>&1; then
            ip link add "$veth" type veth peer name eth0 netns "$ns" || die "cannot create veth $veth"
            ip -n "$ns" addr add "$(mn_node_addr "$node")/24" dev eth0
        fi
        ip link set "$veth" master "$bridge" up
        ip -n "$ns" link set lo up
        ip -n "$ns" link set eth0 up
    done
}

mn_make_fake_gpus() {
    local node index device
    for node in $(mn_nodes); do
        mkdir -p "$STATE_DIR/dev/$node"
        for index in $(seq 0 $((MN_GPUS_PER_NODE - 1))); do
            device="$STATE_DIR/dev/$node/nvidia$index"
            if [[ ! -c "$device" ]]; then
                rm -f "$device"
                mknod "$device" c 195 "$index" || die "mknod $device failed"
            fi
        done
    done
}

mn_write_configs() {
    local host last
    host="$(host_short)"
    last=$((MN_GPUS_PER_NODE - 1))
    mkdir -p "$STATE_DIR/etc"
    cat > "$STATE_DIR/etc/slurm.conf.new" <<CONF
# Written by cloudsweep scripts/test_slurm.sh multinode: a multi-node TEST cluster. Not for production.
ClusterName=$MN_CLUSTER
SlurmctldHost=$host($MN_SUBNET.1)
SlurmctldPort=$MN_PORT
SlurmdPort=$((MN_PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/spool/%n
SlurmctldPidFile=$STATE_DIR/pids/slurmctld.pid
SlurmdPidFile=$STATE_DIR/pids/slurmd-%n.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=bf_interval=2,sched_interval=2
KillWait=5
MinJobAge=300
# A node whose slurmd comes back registers idle at once.
ReturnToService=2
# A lost node is noticed in about 15 s (the default 300 s would make the node-loss tests minutes
# long); jobs on it are requeued (JobRequeue=1 is also SLURM's default).
SlurmdTimeout=5
MessageTimeout=5
JobRequeue=1
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
# The bridge address: inside a node, localhost is the node itself.
AccountingStorageHost=$MN_SUBNET.1
AccountingStoragePort=$((MN_PORT + 2))
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none
SlurmdParameters=config_overrides
NodeName=node[1-$MN_NODES] NodeAddr=$MN_SUBNET.[11-1$MN_NODES] CPUs=$MN_NODE_CPUS RealMemory=$MN_NODE_MEMORY_MB Gres=gpu:$MN_GPUS_PER_NODE State=UNKNOWN
PartitionName=$PARTITION Nodes=node[1-$MN_NODES] Default=YES MaxTime=INFINITE State=UP
CONF
    {
        echo "# Written by cloudsweep scripts/test_slurm.sh multinode: fake GPUs (character devices), per node."
        echo "AutoDetect=off"
        for node in $(mn_nodes); do
            echo "NodeName=$node Name=gpu File=$STATE_DIR/dev/$node/nvidia[0-$last]"
        done
    } > "$STATE_DIR/etc/gres.conf"
    cat > "$STATE_DIR/etc/slurmdbd.conf" <<CONF
# Written by cloudsweep scripts/test_slurm.sh multinode (test cluster accounting, own MariaDB).
DbdHost=localhost
DbdPort=$((MN_PORT + 2))
SlurmUser=root
AuthType=auth/munge
PidFile=$STATE_DIR/pids/slurmdbd.pid
LogFile=$STATE_DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((MN_PORT + 3))
StorageLoc=$DB_NAME
StorageUser=$DB_USER
StoragePass=$DB_PASS
CONF
    chown root:root "$STATE_DIR/etc/slurmdbd.conf"
    chmod 600 "$STATE_DIR/etc/slurmdbd.conf"
    if [[ -f "$(mn_conf)" ]] && ! cmp -s "$(mn_conf)" "$STATE_DIR/etc/slurm.conf.new" \
        && pid_alive "$STATE_DIR/pids/slurmctld.pid" slurmctld; then
        rm -f "$STATE_DIR/etc/slurm.conf.new"
        die "a running multi-node cluster uses a different $(mn_conf): run '$0 multinode stop' first"
    fi
    mv "$STATE_DIR/etc/slurm.conf.new" "$(mn_conf)"
}

mn_start_mariadb() {
    local pidfile="$STATE_DIR/mariadb-run/mariadb.pid" socket
    socket="$(mn_mysql_socket)"
    mkdir -p "$STATE_DIR/mariadb-run"
    chown mysql:mysql "$STATE_DIR/mariadb-run"
    if ! pid_alive "$pidfile" mariadbd; then
        if [[ ! -d "$STATE_DIR/mysql/mysql" ]]; then
            log "initialising MariaDB data in $STATE_DIR/mysql"
            mkdir -p "$STATE_DIR/mysql"
            chown mysql:mysql "$STATE_DIR/mysql"
            mariadb-install-db --user=mysql --datadir="$STATE_DIR/mysql" --skip-test-db \
                --auth-root-authentication-method=socket >"$STATE_DIR/log/mariadb-install.log" 2>&1 \
                || die "mariadb-install-db failed (log: $STATE_DIR/log/mariadb-install.log)"
        fi
        log "starting mariadbd (127.0.0.1:$((MN_PORT + 3)), own socket)"
        # --no-defaults: nothing from /etc/mysql (which names the single-node cluster's socket).
        setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$STATE_DIR/mysql" \
            --bind-address=127.0.0.1 --port=$((MN_PORT + 3)) --socket="$socket" --pid-file="$pidfile" \
            --log-error="$STATE_DIR/mariadb-run/mariadb.log" --innodb-buffer-pool-size=32M \
            </dev/null >>"$STATE_DIR/log/mariadb-stdout.log" 2>&1 &
    fi
    wait_for 30 mariadb mariadb-admin --no-defaults --socket="$socket" ping \
        || die "MariaDB did not come up (log: $STATE_DIR/mariadb-run/mariadb.log)"
    mariadb --no-defaults --socket="$socket" -e "
        CREATE DATABASE IF NOT EXISTS $DB_NAME;
        CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
        CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
        GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';" \
        || die "could not create the accounting database"
}

mn_start_munge() {
    pid_alive "$MUNGE_PID" munged && return 0
    start_munge
    # Shared with the single-node cluster: `stop` ends it only if it was started here.
    tr -dc '0-9' < "$MUNGE_PID" > "$STATE_DIR/pids/munged-started-here"
}

mn_start_slurmd() {  # mn_start_slurmd NODE
    local node="$1" ns
    ns="$(mn_netns "$node")"
    pid_alive "$STATE_DIR/pids/slurmd-$node.pid" slurmd && return 0
    mkdir -p "$STATE_DIR/spool/$node"
    # nsenter, not `ip netns exec`: that remounts /sys, cgroups vanish and slurmd 22.05 exits.
    # unshare --uts: jobs see the node's own host name.
    nsenter --net="/run/netns/$ns" unshare --uts sh -c "hostname $node && exec /usr/sbin/slurmd -N $node" \
        || die "slurmd of $node did not start (log: $STATE_DIR/log/slurmd-$node.log)"
}

mn_node_state() { sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -1; }

mn_wait_nodes_idle() {  # mn_wait_nodes_idle NODE...
    local node state deadline=$((SECONDS + 60))
    for node in "$@"; do
        while :; do
            state="$(mn_node_state "$node")"
            case "$state" in
                idle|mixed|allocated|completing) break ;;
                down*|drain*|*fail*) scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
            esac
            ((SECONDS < deadline)) || die "node $node is '$state' after 60 s, not idle (logs: $STATE_DIR/log/)"
            sleep 0.2
        done
    done
}

mn_start() {
    [[ "$(id -u)" == 0 ]] || die "must run as root (network namespaces, mknod, apt-get)"
    [[ -r /etc/debian_version ]] || die "needs Debian (found no /etc/debian_version)"
    ((MN_NODES >= 1 && MN_NODES <= 9)) || die "CLOUDSWEEP_MULTINODE_NODES must be 1..9, got $MN_NODES"
    mkdir -p "$STATE_DIR"/{log,pids}
    chmod 755 "$STATE_DIR"
    PACKAGES+=(iproute2)   # ip: bridge, veth pairs, network namespaces
    install_packages
    command -v nsenter >/dev/null && command -v unshare >/dev/null || die "needs nsenter and unshare (util-linux)"
    mn_network_up
    mn_make_fake_gpus
    mn_write_configs
    mn_start_munge
    mn_start_mariadb
    if ! pid_alive "$STATE_DIR/pids/slurmdbd.pid" slurmdbd; then
        log "starting slurmdbd (port $((MN_PORT + 2)))"
        /usr/sbin/slurmdbd || die "slurmdbd did not start (log: $STATE_DIR/log/slurmdbd.log)"
    fi
    wait_for 30 slurmdbd sacctmgr -n list cluster || die "slurmdbd does not answer (log: $STATE_DIR/log/slurmdbd.log)"
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$MN_CLUSTER"; then
        sacctmgr -i add cluster "$MN_CLUSTER" >/dev/null || die "sacctmgr add cluster $MN_CLUSTER failed"
    fi
    if ! pid_alive "$STATE_DIR/pids/slurmctld.pid" slurmctld; then
        log "starting slurmctld (port $MN_PORT)"
        mkdir -p "$STATE_DIR/slurmctld"
        /usr/sbin/slurmctld -i || die "slurmctld did not start (log: $STATE_DIR/log/slurmctld.log)"
    fi
    wait_for 30 slurmctld scontrol ping || die "slurmctld does not answer (log: $STATE_DIR/log/slurmctld.log)"
    local node
    for node in $(mn_nodes); do mn_start_slurmd "$node"; done
    # shellcheck disable=SC2046
    mn_wait_nodes_idle $(mn_nodes)
    log "multi-node cluster ready: $MN_NODES nodes, partition $PARTITION; export SLURM_CONF=$(mn_conf)"
}

mn_kill_node() {  # everything of the node dies at once (power loss): slurmd, slurmstepd, the jobs
    local node="$1" ns pids
    ns="$(mn_netns "$node")"
    [[ -e "/run/netns/$ns" ]] || return 0
    pids="$(ip netns pids "$ns" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    [[ -n "${pids// }" ]] && kill -KILL $pids 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    until [[ -z "$(ip netns pids "$ns")" ]]; do
        ((SECONDS < deadline)) || die "processes of $node survive SIGKILL: $(ip netns pids "$ns" | tr '\n' ' ')"
        sleep 0.1
    done
    rm -f "$STATE_DIR/pids/slurmd-$node.pid"
    log "killed every process of $node"
}

mn_stop() {
    local node ns veth
    if pid_alive "$STATE_DIR/pids/slurmctld.pid" slurmctld && [[ -f "$(mn_conf)" ]]; then
        local jobs
        jobs="$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')"
        if [[ -n "${jobs// }" ]]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            wait_for 15 "jobs to end" queue_empty || log "jobs still listed after 15 s"
        fi
    fi
    local -a daemons=()
    for node in $(mn_nodes); do daemons+=("$STATE_DIR/pids/slurmd-$node.pid:slurmd"); done
    stop_pidfiles "${daemons[@]}" "$STATE_DIR/pids/slurmctld.pid:slurmctld"
    stop_pidfiles "$STATE_DIR/pids/slurmdbd.pid:slurmdbd"
    stop_pidfiles "$STATE_DIR/mariadb-run/mariadb.pid:mariadbd"
    if [[ -s "$STATE_DIR/pids/munged-started-here" ]] && pid_alive "$MUNGE_PID" munged \
        && [[ "$(tr -dc '0-9' < "$MUNGE_PID")" == "$(cat "$STATE_DIR/pids/munged-started-here")" ]] \
        && ! pid_alive "${CLOUDSWEEP_SLURM_STATE:-/tmp/cloudsweep-slurm}/pids/slurmctld.pid" slurmctld; then
        stop_pidfiles "$MUNGE_PID:munged"
    fi
    rm -f "$STATE_DIR/pids/munged-started-here"
    # Whatever still runs in a node's namespace (a job step whose slurmd was killed), then the links.
    for node in $(mn_nodes); do
        ns="$(mn_netns "$node")"
        [[ -e "/run/netns/$ns" ]] || continue
        mn_kill_node "$node" >/dev/null
        ip netns del "$ns"
    done
    # The host ends of the veth pairs outlive `ip netns del` by a second or two.
    local deadline=$((SECONDS + 20))
    for node in $(mn_nodes); do
        veth="$(mn_veth "$node")"
        while ip link show "$veth" >/dev/null 2>&1; do
            ((SECONDS < deadline)) || { ip link del "$veth" 2>/dev/null || true; break; }
            sleep 0.1
        done
    done
    if ip link show "$(mn_bridge)" >/dev/null 2>&1; then ip link del "$(mn_bridge)"; fi
    log "stopped (no namespace, link or daemon of the multi-node cluster left)"
}

mn_status() {
    local code=0 node entry name pidfile
    local -a entries=("mariadbd:$STATE_DIR/mariadb-run/mariadb.pid" "slurmdbd:$STATE_DIR/pids/slurmdbd.pid"
                      "slurmctld:$STATE_DIR/pids/slurmctld.pid")
    for node in $(mn_nodes); do entries+=("slurmd:$STATE_DIR/pids/slurmd-$node.pid"); done
    for entry in "${entries[@]}"; do
        name="${entry%%:*}" pidfile="${entry#*:}"
        if pid_alive "$pidfile" "$name"; then
            printf '%-10s running (pid %s)  %s\n' "$name" "$(tr -dc '0-9' < "$pidfile")" "$(basename "$pidfile" .pid)"
        else
            printf '%-10s stopped  %s\n' "$name" "$(basename "$pidfile" .pid)"
            code=1
        fi
    done
    if ((code == 0)); then sinfo -N; fi
    return $code
}

multinode_main() {
    export SLURM_CONF
    SLURM_CONF="$(mn_conf)"
    case "$ACTION" in
        start) mn_start ;;
        stop) mn_stop ;;
        status) mn_status ;;
        kill-node) mn_check_node "$NODE_ARG"; mn_kill_node "$NODE_ARG" ;;
        start-node)
            mn_check_node "$NODE_ARG"
            mn_start_slurmd "$NODE_ARG"
            mn_wait_nodes_idle "$NODE_ARG"
            log "$NODE_ARG is $(mn_node_state "$NODE_ARG")" ;;
        link-down) mn_check_node "$NODE_ARG"; ip link set "$(mn_veth "$NODE_ARG")" down; log "$NODE_ARG's link is down" ;;
        link-up) mn_check_node "$NODE_ARG"; ip link set "$(mn_veth "$NODE_ARG")" up; log "$NODE_ARG's link is up" ;;
        *) usage ;;
    esac
}

if [[ "$MODE" == multi ]]; then
    multinode_main
    exit $?
fi
case "$ACTION" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
