"""Multi-host start-up: cluster detection and flag checking (the 2-process run is in test_train.py)."""

import pytest

from nfnet_jax.train import distributed


@pytest.mark.parametrize('env, want', [
    ({}, None),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}, None),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '16'}, 'slurm'),
    ({'TPU_WORKER_HOSTNAMES': 'host-0'}, None),
    ({'TPU_WORKER_HOSTNAMES': 'host-0,host-1,host-2,host-3'}, 'tpu_pod'),
    ({'OMPI_COMM_WORLD_SIZE': '8'}, 'mpi'),
])
def test_detect_cluster(env, want):
  assert distributed.detect_cluster(env) == want


def test_partial_multi_host_flags_are_rejected_before_jax_starts():
  with pytest.raises(ValueError, match='missing: --num_processes, --process_id'):
    distributed.initialize(coordinator_address='10.0.0.1:1234')
  with pytest.raises(ValueError, match=r'--process_id=2 must be in \[0, --num_processes=2\)'):
    distributed.initialize('10.0.0.1:1234', 2, 2)


def test_single_process_without_flags_or_cluster(monkeypatch):
  for key in ('SLURM_JOB_ID', 'SLURM_NTASKS', 'SLURM_NPROCS', 'TPU_WORKER_HOSTNAMES', 'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(key, raising=False)
  assert distributed.initialize() == 'single'
