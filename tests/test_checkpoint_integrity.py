"""Verified checkpoints: digests checked at restore, fallback to the newest intact one, damaged ones set aside."""

import pathlib
import shutil

import jax
import numpy as np
import pytest

import train_subprocess as ts
from nfnet_jax.train import checkpoints, integrity
from nfnet_jax.train.state import TrainState


def make_state(step, scale=1.0):
  rng = np.random.default_rng(step)
  params = {'net/~/conv': {'w': rng.standard_normal((3, 3, 64, 64), np.float32) * scale,
                           'gain': np.ones(64, np.float32)},
            'net/~/linear': {'w': rng.standard_normal((64, 10), np.float32)}}
  return TrainState(step=np.int32(step), params=params, model_state={},
                    opt_state=(jax.tree.map(np.zeros_like, params),), ema_params=params,
                    ema_model_state={}, rng=np.array([0, step], np.uint32))


def save_steps(workdir, steps, keep=3):
  ckpt = checkpoints.Checkpointer(str(workdir), keep=keep)
  for s in steps:
    ckpt.save(make_state(s), {'model': 'test'}, train_loss=float(s))
  ckpt.close()


def biggest_data_file(step_dir):
  return max((p for p in pathlib.Path(step_dir).rglob('d/*') if p.is_file()), key=lambda p: p.stat().st_size)


def damage(step_dir, how):
  f = biggest_data_file(step_dir)
  if how == 'truncated':
    with open(f, 'r+b') as fh:
      fh.truncate(f.stat().st_size // 3)
  elif how == 'deleted':
    f.unlink()
  else:  # flipped bytes in the middle of the data: orbax reads this back without complaint
    data = bytearray(f.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
      data[i] ^= 0xFF
    f.write_bytes(bytes(data))


@pytest.mark.parametrize('how', ['truncated', 'deleted', 'flipped'])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_and_is_moved_aside(tmp_path, how, capsys):
  save_steps(tmp_path, [1, 2, 3])
  damage(tmp_path / 'checkpoints' / '3', how)
  files_before = sorted(p.relative_to(tmp_path / 'checkpoints' / '3')
                        for p in (tmp_path / 'checkpoints' / '3').rglob('*'))
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  state, config = ckpt.restore(make_state(0))
  assert int(state.step) == 2 and config == {'model': 'test'}
  np.testing.assert_array_equal(state.params['net/~/conv']['w'], make_state(2).params['net/~/conv']['w'])
  assert ckpt.all_steps() == [1, 2]
  ckpt.close()
  err = capsys.readouterr().err
  (line,) = [l for l in err.splitlines() if 'Skipping' in l]
  assert 'step 3' in line and f'moved to {tmp_path / "set_aside" / "3.damaged"}' in line
  assert ('differ from the digests' if how == 'flipped' else 'truncated, missing or damaged') in line
  assert 'Event loop is closed' not in err and 'Traceback' not in err
  aside = tmp_path / 'set_aside' / '3.damaged'
  assert sorted(p.relative_to(aside) for p in aside.rglob('*') if p.name != 'WHY.txt') == files_before
  assert 'digests' in (aside / 'WHY.txt').read_text() or 'damaged' in (aside / 'WHY.txt').read_text()


def test_read_only_users_skip_a_damaged_checkpoint_but_leave_it_in_place(tmp_path, capsys):
  save_steps(tmp_path, [1, 2])
  damage(tmp_path / 'checkpoints' / '2', 'flipped')
  ckpt = checkpoints.Checkpointer(str(tmp_path), read_only=True)
  assert int(ckpt.restore_raw()['step']) == 1
  with pytest.raises(integrity.DamagedCheckpointError, match='step 2 .* is damaged: 1 of'):
    ckpt.restore_raw(2)            # asked for by step: no silent substitute
  ckpt.close()
  assert 'left in place' in capsys.readouterr().err
  assert (tmp_path / 'checkpoints' / '2').is_dir() and not (tmp_path / 'set_aside').exists()


def test_every_checkpoint_damaged_is_one_error_naming_them(tmp_path):
  save_steps(tmp_path, [1, 2])
  for s in (1, 2):
    damage(tmp_path / 'checkpoints' / str(s), 'truncated')
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  with pytest.raises(integrity.DamagedCheckpointError, match=r'every checkpoint .* \(steps 2, 1;'):
    ckpt.restore(make_state(0))
  ckpt.close()
  assert sorted(p.name for p in (tmp_path / 'set_aside').iterdir()) == ['1.damaged', '2.damaged']


def test_params_that_are_not_finite_are_never_saved(tmp_path):
  save_steps(tmp_path, [1])
  bad = make_state(2)
  bad.params['net/~/linear']['w'][0, 0] = np.nan
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  with pytest.raises(integrity.NonFiniteParamsError, match=r'step 2: 2 arrays .*linear/w'):
    ckpt.save(bad, {})             # params and (the same) EMA params
  assert ckpt.all_steps() == [1]
  ckpt.close()


def test_a_checkpoint_saved_with_nan_before_digests_is_refused_at_restore(tmp_path):
  state = make_state(1, scale=np.inf)
  fields = state._asdict()
  assert integrity.problem(fields, integrity.manifest(fields)) .startswith('its params are not finite')
  assert integrity.problem(make_state(1)._asdict(), integrity.manifest(make_state(1)._asdict())) is None


@pytest.mark.slow
def test_training_resumes_from_the_previous_checkpoint_and_ends_with_the_same_params(tmp_path):
  done = tmp_path / 'done'
  ts.run_to_end(done, tmp_path / 'log.txt', devices=1)   # keeps steps 20 and 24
  final = ts.final_params(done)
  assert ts.finished_steps(done) == [ts.TOTAL_STEPS - 4, ts.TOTAL_STEPS]
  for how in ('truncated', 'deleted', 'flipped'):
    workdir = tmp_path / how
    shutil.copytree(done, workdir)
    damage(workdir / 'checkpoints' / str(ts.TOTAL_STEPS), how)
    log = ts.run_to_end(workdir, tmp_path / f'{how}.txt', devices=1)
    assert f'Skipping the damaged checkpoint at step {ts.TOTAL_STEPS}' in log, log
    assert f'Resuming from the checkpoint at step {ts.TOTAL_STEPS - 4}' in log
    assert 'Traceback' not in log and 'Event loop is closed' not in log
    assert (workdir / 'set_aside' / f'{ts.TOTAL_STEPS}.damaged').is_dir()
    state = ts.final_params(workdir)
    assert int(state['step']) == ts.TOTAL_STEPS
    ts.assert_same_params(state['params'], final['params'])
    ts.assert_same_params(state['ema_params'], final['ema_params'])
