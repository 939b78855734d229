#!/bin/bash
# Sourced by slurm/train.sbatch: what the allocation says, as trainer overrides and rendezvous variables.
#
#   ENUMDIST_TRAINER_ARGS  trainer.devices=<tasks per node> trainer.num_nodes=<nodes>, each left out
#                          when the user's own overrides ("$@") set it
#   MASTER_ADDR            the allocation's first node;  MASTER_PORT  from the job id (one per job)
#
# Lightning runs one process per SLURM task and refuses tasks-per-node != trainer.devices, so the
# allocation (--ntasks-per-node, --nodes) decides both. `bash slurm/allocation.sh` prints them.
tasks_per_node="${SLURM_NTASKS_PER_NODE:-${SLURM_TASKS_PER_NODE:-1}}"
tasks_per_node="${tasks_per_node%%(*}"   # "2(x3)" -> 2
tasks_per_node="${tasks_per_node%%,*}"   # "2,1"   -> 2 (the first node's count)
num_nodes="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
ENUMDIST_TRAINER_ARGS=()
case " $* " in *" trainer.devices="*) ;; *) ENUMDIST_TRAINER_ARGS+=("trainer.devices=${tasks_per_node}") ;; esac
case " $* " in *" trainer.num_nodes="*) ;; *) ENUMDIST_TRAINER_ARGS+=("trainer.num_nodes=${num_nodes}") ;; esac
if [ -z "${MASTER_ADDR:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
fi
MASTER_PORT="${MASTER_PORT:-$((10000 + ${SLURM_JOB_ID:-0} % 50000))}"
export MASTER_ADDR MASTER_PORT
if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # run, not sourced: show the result
  echo "ENUMDIST_TRAINER_ARGS=${ENUMDIST_TRAINER_ARGS[*]}"
  echo "MASTER_ADDR=${MASTER_ADDR:-} MASTER_PORT=${MASTER_PORT}"
fi
