#!/usr/bin/env bash
# Start a real one-node SLURM cluster on this host for tests/test_slurm.py.
#
#   bash tests/slurm/start_slurm.sh      # install if needed, configure, start, wait for an idle node
#   bash tests/slurm/stop_slurm.sh       # stop what this script started
#
# Installs Debian's `slurm-wlm`, `munge`, `slurmdbd` and `mariadb-server` when they are missing
# (needs root and apt-get), writes a one-node slurm.conf/slurmdbd.conf for this host from the
# templates beside this script, and starts munged, a private MariaDB (127.0.0.1 only), slurmdbd,
# slurmctld and slurmd as plain daemons (no systemd). Accounting goes through slurmdbd so that
# `sacct` works as on a real cluster: the SLURM executor plugin polls job states with sacct.
# The cluster has one account, `ci` (the default of the submitting user), enforced like on a real
# site, and one partition (default `ci`). Waits until `sinfo` shows the node idle.
#
# Exit codes: 0 cluster up; 3 SLURM cannot be installed/started here (the slurm tests then skip
# with that reason); 4 a slurm.conf not written by this script is in the way; 1 any other failure
# (daemon logs are printed).
#
# Environment: SLURM_CONF (default /etc/slurm/slurm.conf; slurmdbd.conf is written beside it),
# FASTERDIT_SLURM_STATE (default /tmp/fasterdit-slurm: state, database, pid files, daemon logs),
# FASTERDIT_SLURM_PARTITION (default ci), FASTERDIT_SLURM_MEM_MB (default min(20000, 85% of RAM)),
# FASTERDIT_SLURM_DB_PORT (default 3307), FASTERDIT_SLURM_WAIT (seconds, default 90).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
conf=${SLURM_CONF:-/etc/slurm/slurm.conf}
dbd_conf="$(dirname "$conf")/slurmdbd.conf"
state=${FASTERDIT_SLURM_STATE:-/tmp/fasterdit-slurm}
partition=${FASTERDIT_SLURM_PARTITION:-ci}
account=ci
cluster=fasterdit-ci
db_port=${FASTERDIT_SLURM_DB_PORT:-3307}
dbd_port=6819
wait_seconds=${FASTERDIT_SLURM_WAIT:-90}
marker="written by fasterdit tests/slurm/start_slurm.sh"
packages=(slurm-wlm munge slurmdbd mariadb-server)

say() { echo "[start_slurm] $*"; }

have_slurm() {
    local tool
    for tool in slurmctld slurmd slurmdbd sinfo sbatch squeue sacct sacctmgr scontrol munged mariadbd \
        mariadb mariadb-install-db; do
        command -v "$tool" >/dev/null || return 1
    done
}

install_slurm() {
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        say "SKIP: ${packages[*]} are not installed and cannot be installed here (needs root + apt-get)"
        exit 3
    fi
    say "installing ${packages[*]} from Debian's packages"
    local log="${TMPDIR:-/tmp}/fasterdit-slurm-apt.log"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${packages[@]}"; } \
        >"$log" 2>&1; then
        tail -n 20 "$log" || true
        say "SKIP: apt-get could not install ${packages[*]}"
        exit 3
    fi
}

node_state() { sinfo -h -N -p "$partition" -o '%T' 2>/dev/null | head -n 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

dump_logs() {
    local f
    for f in "$state/slurmctld.log" "$state/slurmd.log" "$state/slurmdbd.log" "$state/mysql/error.log" \
        /var/log/munge/munged.log; do
        if [ -f "$f" ]; then echo "---- $f (tail)"; tail -n 25 "$f"; fi
    done
    return 0
}

fail() { say "ERROR: $*"; dump_logs; exit 1; }

wait_for() {  # description seconds command...
    local what=$1 seconds=$2
    shift 2
    local deadline=$(( SECONDS + seconds ))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || fail "$what not ready after ${seconds}s"
        sleep 0.5
    done
}

fill_template() {  # template output
    sed -e "s|@MARKER@|$marker|" -e "s|@CLUSTER@|$cluster|" -e "s|@HOST@|$host|g" \
        -e "s|@STATE@|$state|g" -e "s|@CPUS@|$cpus|" -e "s|@MEM_MB@|$mem_mb|" \
        -e "s|@PARTITION@|$partition|" -e "s|@DB_PORT@|$db_port|g" -e "s|@DBD_PORT@|$dbd_port|g" \
        -e "s|@DB_PASS@|$db_pass|" "$1" >"$2.tmp"
    mv "$2.tmp" "$2"
}

have_slurm || install_slurm
have_slurm || { say "SKIP: SLURM binaries still missing after installing ${packages[*]}"; exit 3; }
if [ "$(id -u)" -ne 0 ]; then
    say "SKIP: starting the test cluster's daemons needs root"
    exit 3
fi

if alive "$state/slurmctld.pid" && alive "$state/slurmd.pid" && alive "$state/slurmdbd.pid" \
    && [ "$(node_state)" = idle ]; then
    say "already running: $(sinfo -h -N -o '%N %P %T')"
    exit 0
fi

for f in "$conf" "$dbd_conf"; do
    if [ -f "$f" ] && ! grep -q "$marker" "$f"; then
        say "ERROR: $f exists and was not written by this script; refusing to overwrite it."
        say "Point SLURM_CONF at another path to run the test cluster next to an existing one."
        exit 4
    fi
done

# Stop leftovers of an earlier run before wiping the state directory.
bash "$here/stop_slurm.sh" >/dev/null 2>&1 || true
rm -rf "$state"
mkdir -p "$state/ctld" "$state/spool" "$(dirname "$conf")"
chmod 0755 "$state"

host=$(hostname -s)
cpus=$(nproc)
mem_total_mb=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
mem_mb=${FASTERDIT_SLURM_MEM_MB:-$(( mem_total_mb * 85 / 100 < 20000 ? mem_total_mb * 85 / 100 : 20000 ))}
db_pass=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
fill_template "$here/slurm.conf.template" "$conf"
fill_template "$here/slurmdbd.conf.template" "$dbd_conf"
chmod 0644 "$conf"
chmod 0600 "$dbd_conf"
export SLURM_CONF="$conf"
say "wrote $conf and $dbd_conf (node $host: $cpus CPUs, $mem_mb MB; partition $partition; state $state)"

# 1. munge: reuse a working munged, otherwise start one as the munge user.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /etc/munge
    install -d -o munge -g munge -m 0711 /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged
    touch "$state/munged.started-here"
fi
wait_for munge 10 bash -c 'munge -n | unmunge'

# 2. a private MariaDB for slurmdbd, on loopback only.
install -d -o mysql -g mysql -m 0750 "$state/mysql"
mariadb-install-db --no-defaults --datadir="$state/mysql" --user=mysql --skip-test-db \
    --auth-root-authentication-method=socket >"$state/mysql-install.log" 2>&1 \
    || { cat "$state/mysql-install.log"; fail "mariadb-install-db failed"; }
setsid runuser -u mysql -- /usr/sbin/mariadbd --no-defaults --datadir="$state/mysql" \
    --socket="$state/mysql/mysqld.sock" --port="$db_port" --bind-address=127.0.0.1 --skip-name-resolve \
    --pid-file="$state/mysql/mariadbd.pid" --log-error="$state/mysql/error.log" \
    --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
sql() { mariadb --no-defaults --socket="$state/mysql/mysqld.sock" -u root -e "$1"; }
wait_for MariaDB 60 sql "SELECT 1"
sql "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$db_pass';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

# 3. slurmdbd, then the cluster, the account and the submitting user in its database.
slurmdbd
wait_for slurmdbd 60 sacctmgr -n list cluster
sacctmgr -i add cluster "$cluster" >/dev/null
sacctmgr -i add account "$account" Cluster="$cluster" Description="fasterdit CI" Organization=ci >/dev/null
sacctmgr -i add user "$(id -un)" Account="$account" DefaultAccount="$account" Cluster="$cluster" >/dev/null

# 4. slurmctld and slurmd.
slurmctld
slurmd
say "munged, MariaDB, slurmdbd, slurmctld and slurmd started; waiting up to ${wait_seconds}s for an idle node"
deadline=$(( SECONDS + wait_seconds ))
resumed=0
while [ $SECONDS -lt $deadline ]; do
    s=$(node_state || true)
    case "$s" in
        idle) break ;;
        down*|drain*|fail*)
            if [ $resumed -eq 0 ]; then
                scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi ;;
    esac
    sleep 1
done
[ "$(node_state || true)" = idle ] || { sinfo -N -l || true; fail "node not idle after ${wait_seconds}s"; }
sinfo -N -o '%N %P %T %c %m'
say "SLURM is up: cluster $cluster, partition $partition, account $account (default for $(id -un))"
