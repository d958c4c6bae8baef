# Pre-emption and time limits for the sbatch scripts here (sourced, not run):
#
#   source "${MEGATRON_DETOX_SLURM:-$SLURM_SUBMIT_DIR/launch/slurm}/requeue.sh"
#   run_requeueable srun --kill-on-bad-exit=1 python -m megatron_detox train "$CONFIG" ...
#
# With `#SBATCH --signal=B:USR1@120` SLURM sends SIGUSR1 to this batch script two minutes
# before the time limit; on pre-emption or scancel it sends SIGTERM. The trap forwards the
# signal to the job step (srun passes it on to every task), where megatron-detox stops
# cleanly: training finishes its step and checkpoints, generation/scoring/evaluation keep
# every finished record. It then exits with 75 (EX_TEMPFAIL,
# megatron_detox.preemption.REQUEUE_EXIT_CODE) and this script requeues the job
# (`#SBATCH --requeue`); the requeued job reruns the same command and continues where it
# stopped. It keeps its SLURM_JOB_ID, so the run-folder lock of its earlier run is taken
# over. A finished run (0) or a user mistake (2) is not requeued.

REQUEUE_EXIT_CODE=75

run_requeueable() {
  local rc=0 preempted=0 child
  "$@" &
  child=$!
  trap 'preempted=1; kill -USR1 "$child" 2>/dev/null || true' USR1
  trap 'preempted=1; kill -TERM "$child" 2>/dev/null || true' TERM
  while true; do
    rc=0
    wait "$child" || rc=$?
    kill -0 "$child" 2>/dev/null || break  # `wait` also returns when a trapped signal arrives
  done
  trap - USR1 TERM
  # Ranks killed by srun after rank 0 exited 75 may report another code: after a signal,
  # any stop but success or a user mistake is a stop to resume.
  if [[ $rc -eq $REQUEUE_EXIT_CODE || ($preempted -eq 1 && $rc -ne 0 && $rc -ne 2) ]]; then
    echo "megatron-detox: stopped (exit $rc); requeueing SLURM job ${SLURM_JOB_ID:-?}" >&2
    scontrol requeue "$SLURM_JOB_ID"
  fi
  return "$rc"
}
