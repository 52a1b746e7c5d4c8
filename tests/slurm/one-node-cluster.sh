#!/usr/bin/env bash
# Starts (start) or stops (stop) a one-node Slurm cluster on this machine for the opt-in Slurm
# test: munged, slurmctld and slurmd with a generated slurm.conf. Needs root and the Debian
# packages slurm-wlm and munge. State lives under $SLURM_TEST_DIR (default /tmp/rfb-slurm).
set -euo pipefail
dir=${SLURM_TEST_DIR:-/tmp/rfb-slurm}
case ${1:-start} in
start)
    mkdir -p "$dir"/{ctld,slurmd,log} /run/munge /etc/slurm
    chown munge:munge /run/munge
    pgrep -x munged >/dev/null || su -s /bin/sh munge -c munged
    host=$(hostname -s)
    cpus=$(nproc)
    memory=$(awk '/MemTotal/ {print int($2 / 1024) - 1024}' /proc/meminfo)
    cat >/etc/slurm/slurm.conf <<CONF
ClusterName=rfb-test
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/slurmd
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
KillWait=60
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
    rm -f /etc/slurm/cgroup.conf
    pgrep -x slurmctld >/dev/null || slurmctld -i
    pgrep -x slurmd >/dev/null || slurmd
    for _ in $(seq 1 60); do
        sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && { sinfo; exit 0; }
        sleep 1
    done
    echo "the node did not come up; logs in $dir/log" >&2
    sinfo >&2 || true
    exit 1
    ;;
stop)
    scancel --user=root 2>/dev/null || true
    [ -f "$dir/slurmd.pid" ] && kill "$(cat "$dir/slurmd.pid")" 2>/dev/null || true
    [ -f "$dir/slurmctld.pid" ] && kill "$(cat "$dir/slurmctld.pid")" 2>/dev/null || true
    ;;
esac
