#!/usr/bin/env bash
# A real single-node SLURM 22.05 for the test suite (NOT for users): controller, compute node,
# accounting (slurmdbd + MariaDB) and 4 fake GPUs that SLURM schedules.
#
#   scripts/test_slurm.sh start  [STATE_DIR]   # install if missing, start, wait until the node is idle
#   scripts/test_slurm.sh stop   [STATE_DIR]   # stop the daemons this script started (by PID file)
#   scripts/test_slurm.sh status [STATE_DIR]   # which daemons run, and sinfo
#
# Needs root on Debian 12 (apt-get, mknod, /etc/slurm). Idempotent: `start` on a running cluster
# only checks it. Daemons are started directly (no systemd in CI sandboxes) and stopped only through
# their PID files, never by name. Facts behind each setting: ../shared/notes/slurm-on-one-machine.md.
#
# The cluster: name `cloudsweep`, partition `debug` (the `local` profile of jobs/slurm.yaml), one node
# (this host's short name) declaring 8 CPUs and gpu:4 (character devices <STATE_DIR>/dev/nvidia0..3).
set -euo pipefail

ACTION="${1:-}"
STATE_DIR="${2:-${CLOUDSWEEP_SLURM_STATE:-/tmp/cloudsweep-slurm}}"
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
            wait_for 15 "jobs to end" test -z "$(squeue -h -o %A 2>/dev/null)" || log "jobs still listed after 15 s"
        fi
    fi
    # SLURM's daemons together, then what they use (accounting database, munge).
    stop_pidfiles "$STATE_DIR/pids/slurmd.pid:slurmd" "$STATE_DIR/pids/slurmctld.pid:slurmctld"
    stop_pidfiles "$STATE_DIR/pids/slurmdbd.pid:slurmdbd"
    stop_pidfiles "$STATE_DIR/mariadb-run/mariadb.pid:mariadbd" "$MUNGE_PID:munged"
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

case "$ACTION" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
