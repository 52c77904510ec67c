"""Recoverable divergence: the NaN error lists the kept checkpoints; --resume_step goes back to one."""

import pathlib
import shutil

import jax
import numpy as np
import pytest

import train_subprocess as ts

STEPS = 12
RUN = dict(devices=1, total_steps=STEPS, checkpoint_every_steps=2, keep_checkpoints=2, keep_every_steps=4)


@pytest.mark.slow
def test_diverged_run_lists_kept_checkpoints_and_resume_step_recovers_with_a_lower_lr(tmp_path):
  sane = tmp_path / 'sane'
  ts.run_to_end(sane, tmp_path / 'sane.txt', **RUN)
  # keep_every_steps=4 keeps 4 and 8 beyond the last two (10, 12).
  assert ts.finished_steps(sane) == [4, 8, 10, 12]
  reference = ts.final_params(sane)
  # The run goes on at an absurd learning rate and diverges.
  workdir = tmp_path / 'run'
  shutil.copytree(sane, workdir)
  bad = dict(RUN, total_steps=2 * STEPS, **{'optimizer.lr': 1e12})
  proc = ts.launch(workdir, tmp_path / 'bad.txt', extra_args=['--allow_config_change'], **bad)
  assert proc.wait(timeout=900) == 1
  log = (tmp_path / 'bad.txt').read_text()
  assert 'Traceback' not in log
  (line,) = [l for l in log.splitlines() if l.startswith('error:')]
  assert 'became nan' in line or 'became inf' in line or 'hold NaN or Inf' in line, line
  for step in ts.finished_steps(workdir):
    assert f'step {step} (train loss ' in line and 'param norm' in line
  assert '--resume_step=STEP' in line
  assert "--allow_config_change: resuming with optimizer.lr: 0.1 -> 1000000000000.0" in log
  diverged_steps = ts.finished_steps(workdir)
  assert diverged_steps[:2] == [4, 8] and diverged_steps[-1] >= STEPS
  # Back to step 8 with the sane settings: the later checkpoints move aside, and the run ends where
  # the sane run ended.
  log = ts.run_to_end(workdir, tmp_path / 'resume.txt', extra_args=['--resume_step=8'], **RUN)
  assert 'Resuming from the checkpoint at step 8' in log
  aside = sorted(p.name for p in (workdir / 'set_aside').iterdir())
  assert aside == sorted(f'{s}.after_resume_step_8' for s in diverged_steps if s > 8)
  state = ts.final_params(workdir)
  assert int(state['step']) == STEPS
  ts.assert_same_params(state['params'], reference['params'])
  # A step that is not kept is one line naming the kept ones.
  code, out = ts.run_script('train.py', *ts.cli_flags(workdir, **{k: v for k, v in RUN.items() if k != 'devices'}),
                            '--resume_step=6')
  assert code == 2 and 'error: --resume_step=6 is not a checkpoint kept' in out and 'Traceback' not in out
