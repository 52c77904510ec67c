"""Multi-host start-up: jax.distributed.initialize from flags, or auto-detected on TPU pods and Slurm."""

from __future__ import annotations

import os

from absl import flags
import jax


def detect_cluster(environ=None) -> str | None:
  """Names the multi-process environment jax can configure itself from, or None for one process."""
  env = os.environ if environ is None else environ
  if int(env.get('SLURM_NTASKS', env.get('SLURM_NPROCS', '1')) or 1) > 1 and 'SLURM_JOB_ID' in env:
    return 'slurm'
  if len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1:
    return 'tpu_pod'
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1') or 1) > 1:
    return 'mpi'
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> str:
  """Joins the processes of one job; must run before any other jax call. Returns how it started.

  With explicit flags all three must be given. Without flags, Slurm jobs with several tasks, TPU pod
  slices with several hosts and Open MPI jobs are detected and jax configures itself from their
  environment; otherwise this is a single-process run and nothing happens.
  """
  given = {'coordinator_address': coordinator_address, 'num_processes': num_processes,
           'process_id': process_id}
  if any(v is not None for v in given.values()):
    missing = [k for k, v in given.items() if v is None]
    if missing:
      raise ValueError(f'multi-host flags need all of --coordinator_address, --num_processes and '
                       f'--process_id; missing: {", ".join("--" + m for m in missing)}.')
    if not 0 <= process_id < num_processes:
      raise ValueError(f'--process_id={process_id} must be in [0, --num_processes={num_processes}).')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return 'flags'
  cluster = detect_cluster()
  if cluster is None:
    return 'single'
  jax.distributed.initialize()
  return cluster


def define_flags() -> None:
  """Defines --coordinator_address, --num_processes and --process_id for a script."""
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host only).')
  flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host only).')
  flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes) (multi-host only).')


def initialize_from_flags() -> str:
  """`initialize` with the flags of `define_flags` (after absl has parsed them)."""
  f = flags.FLAGS
  return initialize(f.coordinator_address, f.num_processes, f.process_id)
