#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by slurm/cluster-up.sh (slurmd, slurmctld, munged).
#
# Usage: bash slurm/cluster-down.sh [--purge]
#   --purge  also delete the state/spool/log directory, so the next cluster-up starts clean
#            (forgets queued jobs and job ids).
# Safe to run when nothing is running. Packages, the munge key and slurm.conf are left in place.
set -euo pipefail

SLURM_DIR="${ENUMDIST_SLURM_DIR:-/tmp/enumdist-slurm}"
PURGE=0
for arg in "$@"; do
  case "$arg" in
  --purge) PURGE=1 ;;
  *) echo "[cluster-down] unknown argument '$arg'; usage: $0 [--purge]" >&2; exit 2 ;;
  esac
done

log() { echo "[cluster-down] $*"; }

stop_daemon() { # pidfile name
  local pid
  if [ -s "$1" ]; then
    pid="$(cat "$1")"
    # Skip recycled pids (other name) and zombies (already dead, waiting for a reaper).
    if [ -d "/proc/$pid" ] && grep -q "$2" "/proc/$pid/comm" 2>/dev/null &&
      ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then
      log "stopping $2 (pid $pid)"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do [ -d "/proc/$pid" ] || break; sleep 0.5; done
      if [ -d "/proc/$pid" ]; then
        log "$2 ignored SIGTERM; sending SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
      fi
    fi
  fi
  rm -f "$1"
}

stop_daemon "$SLURM_DIR/run/slurmd.pid" slurmd
stop_daemon "$SLURM_DIR/run/slurmctld.pid" slurmctld
stop_daemon /run/munge/munged.pid munged

if [ "$PURGE" = 1 ]; then
  log "removing $SLURM_DIR"
  rm -rf "$SLURM_DIR"
fi
log "done"
