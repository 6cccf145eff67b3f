#!/usr/bin/env bash
# Makes a single-node Slurm answer on this machine, for the `slurm` sandbox backend's tests: this
# host is controller and compute node, with two fake GPUs (`gres gpu:2`, two mknod device nodes,
# AutoDetect=off) so two `gpu:1` jobs get different devices. Idempotent and fast when already up.
# Needs root. Prints what it does to stderr; on success the last line says which process tracking
# and task plugins it runs with.
#
#   scripts/slurm.sh                 # install (Debian's slurm-wlm, munge) if missing, configure, start
#   SLURM_PARTITION=debug            # the partition it makes (default: debug)
#
# The device nodes are /dev/argpu0 and /dev/argpu1 (char 195:240/241, no driver behind them): not
# /dev/nvidia*, which the sandboxes would take for a real GPU.
set -euo pipefail

say() { echo "slurm: $*" >&2; }
PARTITION="${SLURM_PARTITION:-debug}"
CONF_DIR=/etc/slurm
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGDIR=/var/log/slurm
# Bumped whenever the configuration written below changes: a cluster started with another is redone.
MARK="# autoresearch-mcp slurm.sh config 2"

node_idle() {
    local s
    s=$(timeout 10 sinfo -h -N -p "$PARTITION" -o '%T' 2>/dev/null | head -1) || return 1
    [[ "$s" == idle || "$s" == mixed || "$s" == allocated ]]
}

if [[ -f "$CONF_DIR/slurm.conf" ]] && grep -qxF "$MARK" "$CONF_DIR/slurm.conf" && node_idle; then
    say "already up ($(grep -o 'ProctrackType=.*' "$CONF_DIR/slurm.conf"))"
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    say "installing Debian's slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null 2>&1 \
        || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null; }
fi

# munge: one key, one daemon.
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating the munge key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    if id munge >/dev/null 2>&1; then
        su -s /bin/sh munge -c 'munged --force' || munged --force
    else
        munged --force
    fi
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# Fake GPUs: two char devices with no driver (open gives ENXIO, or EPERM where a cgroup denies it).
for i in 0 1; do
    [[ -c /dev/argpu$i ]] || mknod -m 0666 /dev/argpu$i c 195 $((240 + i))
done

HOST=$(hostname -s)
# Jobs of the tests are light and mostly wait: the node offers at least 8 CPUs whatever the machine
# has (config_overrides), so a test's jobs do not queue behind another test's.
CPUS=$(nproc)
((CPUS >= 8)) || CPUS=8
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
mkdir -p "$CONF_DIR" "$STATE" "$SPOOL" "$LOGDIR"
chown slurm:slurm "$STATE" "$LOGDIR" 2>/dev/null || true

write_conf() { # $1 proctrack, $2 task plugins
    cat >"$CONF_DIR/slurm.conf" <<EOF
$MARK
# A single-node test cluster: this host is controller and compute node.
ClusterName=autoresearch
SlurmdParameters=config_overrides
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
ProctrackType=$1
TaskPlugin=$2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
GresTypes=gpu
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    cat >"$CONF_DIR/gres.conf" <<EOF
AutoDetect=off
NodeName=$HOST Name=gpu File=/dev/argpu[0-1]
EOF
    cat >"$CONF_DIR/cgroup.conf" <<EOF
CgroupPlugin=autodetect
ConstrainCores=no
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
ConstrainDevices=yes
EOF
}

stop_daemons() {
    for p in slurmd slurmctld; do
        local f=/run/$p.pid
        if [[ -s $f ]] && kill -0 "$(cat "$f")" 2>/dev/null; then
            kill "$(cat "$f")" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$(cat "$f" 2>/dev/null)" 2>/dev/null || break; sleep 0.1; done
        fi
    done
}

start_daemons() {
    say "starting slurmctld and slurmd"
    slurmctld -i || return 1
    slurmd || return 1
    local deadline=$((SECONDS + 60))
    until node_idle; do
        if ((SECONDS >= deadline)); then return 1; fi
        # A node that was DOWN (a previous failed start) comes back on its own with ReturnToService=2.
        scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
        sleep 1
    done
}

# A job that exits 0 proves the plugins work here (cgroup plugins fail at job start, not at boot).
probe_job() {
    local out
    out=$(timeout 60 srun -p "$PARTITION" -n1 --mem=64 --gres=gpu:1 -t 1 sh -c 'echo ok:$SLURM_JOB_GPUS' 2>&1) \
        && [[ "$out" == ok:* ]] && return 0
    say "probe job failed: $out"
    return 1
}

stop_daemons
write_conf proctrack/cgroup task/cgroup,task/affinity
if start_daemons && probe_job; then
    say "up: ProctrackType=proctrack/cgroup TaskPlugin=task/cgroup,task/affinity (memory and devices from Slurm's cgroups)"
    exit 0
fi
say "the cgroup plugins do not work here (see $LOGDIR/slurmd.log); falling back to proctrack/linuxproc, task/none:"
say "NO memory or device limits from Slurm on this node (the job's own sandbox cgroup still limits memory)"
tail -5 "$LOGDIR/slurmd.log" >&2 || true
stop_daemons
write_conf proctrack/linuxproc task/none
if start_daemons && probe_job; then
    say "up: ProctrackType=proctrack/linuxproc TaskPlugin=task/none"
    exit 0
fi
say "Slurm does not start here; logs: $LOGDIR"
tail -20 "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" >&2 || true
exit 1
