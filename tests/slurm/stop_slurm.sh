#!/usr/bin/env bash
# Stop the one-node test cluster started by tests/slurm/start_slurm.sh.
# Cancels the test cluster's jobs, then stops slurmd, slurmctld, slurmdbd, the private MariaDB and
# (only if start_slurm.sh started it) munged, each by the pid file it recorded. The generated
# slurm.conf/slurmdbd.conf stay in place; start_slurm.sh rewrites them next time.
set -uo pipefail

state=${FASTERDIT_SLURM_STATE:-/tmp/fasterdit-slurm}
say() { echo "[stop_slurm] $*"; }

stop_pidfile() {  # name pidfile
    local name=$1 pidfile=$2 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 75); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null
        fi
        say "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

if [ -f "$state/slurmctld.pid" ] && kill -0 "$(cat "$state/slurmctld.pid")" 2>/dev/null; then
    jobs=$(squeue -h -o '%i' 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        say "cancelled jobs: $(echo $jobs)"
        sleep 2
    fi
fi

stop_pidfile slurmd "$state/slurmd.pid"
stop_pidfile slurmctld "$state/slurmctld.pid"
stop_pidfile slurmdbd "$state/slurmdbd.pid"
stop_pidfile mariadbd "$state/mysql/mariadbd.pid"
if [ -f "$state/munged.started-here" ]; then
    stop_pidfile munged /run/munge/munged.pid
    rm -f "$state/munged.started-here"
fi
exit 0
