#!/usr/bin/env bash
# slurm-local.sh start|stop|status: a one-node Slurm cluster on this machine, to try and test fishtune's
# `hydra/launcher=slurm` against a real scheduler (what `make test-slurm` and CI use).
#
#   start   install Debian's slurmctld, slurmd, slurm-client and munge if missing (apt-get), write
#           /etc/slurm/slurm.conf for this host (one node, all its CPUs, its memory less 2 GiB, a default
#           partition `debug`, no GPUs), start munged, slurmctld and slurmd, and wait until the node is up
#   stop    stop the daemons start started (a munged that was already running is left alone)
#   status  sinfo
#
# Needs root (runs itself through sudo when it can). Debian or Ubuntu. State and logs go to
# $SLURM_LOCAL_STATE (default /var/tmp/slurm-local); the partition name is $SLURM_LOCAL_PARTITION (debug).
# Exit status: 0 when the cluster answers, 1 otherwise (with one line on stderr saying why).
set -u

STATE=${SLURM_LOCAL_STATE:-/var/tmp/slurm-local}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
CONF=/etc/slurm/slurm.conf

die() { echo "slurm-local: $*" >&2; exit 1; }

as_root() {
  [ "$(id -u)" = 0 ] && return
  command -v sudo >/dev/null || die "needs root (and sudo is not installed)"
  exec sudo -E SLURM_LOCAL_STATE="$STATE" SLURM_LOCAL_PARTITION="$PARTITION" bash "$0" "$@"
}

node_up() { sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
  command -v apt-get >/dev/null || die "slurmctld/slurmd/munge are missing and there is no apt-get to install them"
  echo "slurm-local: installing slurmctld slurmd slurm-client munge" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null || die "apt-get could not install Slurm"
}

start_munge() {
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    head -c 1024 /dev/urandom >/etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null
  pgrep -x munged >/dev/null && return
  runuser -u munge -- /usr/sbin/munged || die "munged did not start"
  pgrep -x -n munged >"$STATE/munged.pid"  # ours: stop ends it
}

write_conf() {
  local host cpus mem_mb
  host=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
  mem_mb=$(( mem_mb > 4096 ? mem_mb - 2048 : mem_mb / 2 ))
  mkdir -p "$(dirname "$CONF")" "$STATE/ctld" "$STATE/spool" "$STATE/log"
  cat >"$CONF" <<EOF
# written by tools/slurm-local.sh: one node, partition $PARTITION
ClusterName=fishtune-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  as_root start
  install_packages
  mkdir -p "$STATE"
  start_munge
  write_conf
  pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld || die "slurmctld did not start (see $STATE/log)"
  pgrep -x slurmd >/dev/null || /usr/sbin/slurmd || die "slurmd did not start (see $STATE/log)"
  local i
  for i in $(seq 30); do
    node_up && break
    # a node left down by an earlier run comes back with resume
    [ "$i" = 5 ] && scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1
    sleep 1
  done
  node_up || die "the node did not come up within 30 s (see $STATE/log)"
  sinfo
}

stop() {
  as_root stop
  local f pid
  for f in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" "$STATE/munged.pid"; do
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null
    for _ in $(seq 10); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    rm -f "$f"
  done
  echo "slurm-local: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) command -v sinfo >/dev/null || die "Slurm is not installed"; sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
