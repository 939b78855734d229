#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on this machine: this host is both controller and compute node.
#
# Why: the pipeline's SLURM paths (srun ranks, requeue, submitit) are tested against a real
# scheduler, not a mock. CI runs this as root on a fresh Debian 12 machine without systemd.
#
# What it does, each step skipped when already done (a second run on a live cluster takes ~1 s):
#   1. installs Debian's slurm-wlm and munge if missing (apt registries only);
#   2. makes `hostname -s` resolvable (slurmctld looks its own name up);
#   3. creates a munge key and starts munged (as the munge user);
#   4. writes /etc/slurm/slurm.conf from `slurmd -C` (CPUs, sockets, memory of this machine);
#   5. starts slurmctld and slurmd directly (no systemd), clearing stale pid files;
#   6. waits (bounded) until `sinfo` shows the node usable, else prints the logs and exits 1.
#
# Environment knobs: ENUMDIST_SLURM_DIR (state/spool/logs, default /tmp/enumdist-slurm),
# ENUMDIST_SLURM_WAIT (seconds to wait for the node, default 60).
# Tear down with slurm/cluster-down.sh.
set -euo pipefail

SLURM_DIR="${ENUMDIST_SLURM_DIR:-/tmp/enumdist-slurm}"
WAIT_S="${ENUMDIST_SLURM_WAIT:-60}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MUNGE_KEY=/etc/munge/munge.key
HOST="$(hostname -s)"

log() { echo "[cluster-up] $*"; }
die() {
  echo "[cluster-up] ERROR: $*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons); try: sudo bash $0"

# --- 1. packages ---------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
  ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || die "apt-get update failed; is an apt mirror reachable?"
  # Keep package scripts from starting the daemons through init scripts (slurmctld has no
  # config yet and would fail the install); we start them ourselves below.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -q slurm-wlm munge >/dev/null ||
    die "apt-get install slurm-wlm munge failed; see the apt output above"
  if trap -p EXIT | grep -q policy-rc.d; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
fi

# --- 2. hostname resolution ------------------------------------------------------------------------
if ! getent hosts "$HOST" >/dev/null; then
  log "adding $HOST to /etc/hosts"
  echo "127.0.1.1 $HOST" >>/etc/hosts
fi

# Helpers on pid files: a pid file is live only if its process exists, is not a zombie and has
# the expected name (a recycled pid belongs to someone else).
pid_alive() { # pidfile name
  local pid
  [ -s "$1" ] || return 1
  pid="$(cat "$1")"
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -q "$2" "/proc/$pid/comm" 2>/dev/null &&
    # A killed daemon can linger as a zombie when PID 1 does not reap (containers): that is dead.
    ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}
clear_stale() { # pidfile name
  if [ -e "$1" ] && ! pid_alive "$1" "$2"; then
    log "removing stale pid file $1"
    rm -f "$1"
  fi
}

# --- 3. munge --------------------------------------------------------------------------------------
MUNGE_USER=munge
id "$MUNGE_USER" >/dev/null 2>&1 || MUNGE_USER=root
install -d -m 0700 -o "$MUNGE_USER" /etc/munge /var/lib/munge /var/log/munge
install -d -m 0755 -o "$MUNGE_USER" /run/munge
if [ ! -s "$MUNGE_KEY" ]; then
  log "creating munge key $MUNGE_KEY"
  if command -v mungekey >/dev/null; then
    mungekey --create --force --keyfile="$MUNGE_KEY"
  else
    dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
  fi
fi
chown "$MUNGE_USER" "$MUNGE_KEY"
chmod 0400 "$MUNGE_KEY"

MUNGE_PID=/run/munge/munged.pid
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "munged already running"
else
  clear_stale "$MUNGE_PID" munged
  log "starting munged"
  # --force: start even if a stale socket from a killed munged is left behind.
  if [ "$MUNGE_USER" = root ]; then
    munged --force
  else
    runuser -u "$MUNGE_USER" -- munged --force
  fi
  for _ in $(seq 1 20); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.5
  done
  munge -n | unmunge >/dev/null || die "munged did not start; see /var/log/munge/munged.log"
fi

# --- 4. slurm.conf ---------------------------------------------------------------------------------
mkdir -p "$SLURM_DIR"/{state,spool,log,run} "$CONF_DIR"
# `slurmd -C` prints the node line exactly as slurmd will register it; a mismatch (say, more
# memory configured than present) would leave the node drained.
NODE_LINE="$(slurmd -C 2>/dev/null | grep -m1 '^NodeName=' || true)"
if [ -z "$NODE_LINE" ]; then
  NODE_LINE="NodeName=$HOST CPUs=$(nproc) RealMemory=$(free -m | awk '/^Mem:/{print $2}')"
fi
# Use our own spelling of the host name so NodeName and SlurmctldHost always agree.
NODE_LINE="$(echo "$NODE_LINE" | sed -E "s/^NodeName=[^ ]+/NodeName=$HOST/")"
CPUS="$(echo "$NODE_LINE" | sed -nE 's/.*CPUs=([0-9]+).*/\1/p')"
MEM_MB="$(echo "$NODE_LINE" | sed -nE 's/.*RealMemory=([0-9]+).*/\1/p')"
# Without a default, a job with no --mem would claim the whole node's memory and serialise jobs.
DEF_MEM_PER_CPU=$((MEM_MB / CPUS))

NEW_CONF="$(
  cat <<EOF
# Written by enumdist slurm/cluster-up.sh; rewritten on every run, do not edit by hand.
ClusterName=enumdist
SlurmctldHost=$HOST
$(grep -v '^#' "$(dirname "$0")/common.conf")
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
JobRequeue=1
KillWait=5
MinJobAge=60
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/run/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/run/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$NODE_LINE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)"

CONF_CHANGED=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
  log "writing $CONF"
  printf '%s\n' "$NEW_CONF" >"$CONF.tmp.$$"
  mv -f "$CONF.tmp.$$" "$CONF"
  CONF_CHANGED=1
fi

# --- 5. daemons ------------------------------------------------------------------------------------
CTLD_PID="$SLURM_DIR/run/slurmctld.pid"
SLURMD_PID="$SLURM_DIR/run/slurmd.pid"
stop_daemon() { # pidfile name
  if pid_alive "$1" "$2"; then
    kill "$(cat "$1")" 2>/dev/null || true
    for _ in $(seq 1 20); do pid_alive "$1" "$2" || break; sleep 0.5; done
    pid_alive "$1" "$2" && kill -9 "$(cat "$1")" 2>/dev/null || true
  fi
  rm -f "$1"
}
if [ "$CONF_CHANGED" = 1 ]; then
  # A changed node line is only picked up by a restart, not by `scontrol reconfigure`.
  stop_daemon "$SLURMD_PID" slurmd
  stop_daemon "$CTLD_PID" slurmctld
fi

clear_stale "$CTLD_PID" slurmctld
if ! pid_alive "$CTLD_PID" slurmctld; then
  log "starting slurmctld"
  slurmctld || die "slurmctld failed to start; see $SLURM_DIR/log/slurmctld.log"
fi
clear_stale "$SLURMD_PID" slurmd
if ! pid_alive "$SLURMD_PID" slurmd; then
  log "starting slurmd"
  slurmd || die "slurmd failed to start; see $SLURM_DIR/log/slurmd.log"
fi

# --- 6. wait for the node ----------------------------------------------------------------------------
deadline=$((SECONDS + WAIT_S))
state=""
while [ "$SECONDS" -lt "$deadline" ]; do
  state="$(sinfo -h -N -n "$HOST" -o '%t' 2>/dev/null | head -n1 || true)"
  case "$state" in
  idle | mix | alloc | comp) break ;;
  down* | drain* | drng*)
    # A node left down by an earlier, killed slurmd comes back once slurmd answers.
    scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
    ;;
  esac
  sleep 1
done
case "$state" in
idle | mix | alloc | comp) log "node $HOST is $state; cluster is up (partition debug)" ;;
*)
  echo "[cluster-up] ERROR: node $HOST did not become idle within ${WAIT_S}s (state: '${state:-none}')." >&2
  echo "[cluster-up] Last lines of $SLURM_DIR/log/slurmctld.log and slurmd.log:" >&2
  tail -n 20 "$SLURM_DIR/log/slurmctld.log" "$SLURM_DIR/log/slurmd.log" >&2 2>/dev/null || true
  echo "[cluster-up] Fix the cause above, or reset with: bash slurm/cluster-down.sh --purge" >&2
  exit 1
  ;;
esac
