#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for tests/test_slurm.py (run as root).
#
#   apt-get update && apt-get install -y slurm-wlm munge   # once (Debian's Slurm 22.05)
#   bash tests/slurm/cluster.sh up     # munged, slurmctld, slurmd; waits until the node is idle
#   pytest -m slurm tests/test_slurm.py
#   bash tests/slurm/cluster.sh down   # stops the three daemons
#
# No accounting (slurmdbd): a job killed by SIGKILL then leaves submitit waiting, see
# ../shared/PITFALLS.md. State, spool, logs and pid files live in $RANKGYM_SLURM_DIR
# (default /tmp/rankgym-slurm); the config is written to /etc/slurm/slurm.conf, where sinfo,
# sbatch and submitit's calls find it.
set -euo pipefail

action=${1:-}
dir=${RANKGYM_SLURM_DIR:-/tmp/rankgym-slurm}
conf=/etc/slurm/slurm.conf

stop() {  # by the pid files the daemons wrote
  for name in slurmd slurmctld munged; do
    if [ -f "$dir/run/$name.pid" ]; then
      kill "$(cat "$dir/run/$name.pid")" 2>/dev/null || true
      rm -f "$dir/run/$name.pid"
    fi
  done
}

case "$action" in
  up)
    for tool in munged slurmctld slurmd sinfo; do
      command -v "$tool" >/dev/null || {
        echo "cluster.sh: $tool not found; install it: apt-get install -y slurm-wlm munge" >&2
        exit 1
      }
    done
    [ "$(id -u)" = 0 ] || { echo "cluster.sh: run as root (the daemons run as root)" >&2; exit 1; }
    stop
    mkdir -p "$dir"/{state,spool,log,run,munge} /etc/slurm
    chmod 755 "$dir/munge"  # munged refuses a socket directory others cannot read
    [ -f /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    munged --force --socket="$dir/munge/munge.socket.2" --pid-file="$dir/run/munged.pid" \
      --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"
    host=$(hostname -s)
    node=$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")
    cat > "$conf" <<CONF
ClusterName=rankgym
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket.2
CryptoType=crypto/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MpiDefault=none
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    slurmctld
    slurmd
    for _ in $(seq 60); do
      if sinfo -h -o %t 2>/dev/null | grep -qE "^idle|^mix"; then
        sinfo
        exit 0
      fi
      sleep 0.5
    done
    echo "cluster.sh: the node did not become idle; see $dir/log/" >&2
    sinfo || true
    exit 1
    ;;
  down)
    stop
    echo "cluster.sh: stopped"
    ;;
  *)
    echo "usage: bash tests/slurm/cluster.sh up|down" >&2
    exit 2
    ;;
esac
