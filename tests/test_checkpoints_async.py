"""Async checkpoints: training goes on while a save is written, and a SIGKILL in the middle of an
async save leaves the previous checkpoint whole."""

import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np

from nfnet_jax.train import checkpoints
from nfnet_jax.train.state import TrainState

REPO = pathlib.Path(__file__).resolve().parents[1]
MIB = 96   # state size: large enough that writing it takes a while


def big_state(step, seed=0):
  rng = np.random.default_rng(seed)
  params = {'net/linear': {'w': rng.standard_normal((MIB * 2**18,), np.float32)}}
  return TrainState(step=np.int32(step), params=params, model_state={}, opt_state=(),
                    ema_params={'net/linear': {'w': params['net/linear']['w'] * 0.5}},
                    ema_model_state={}, rng=np.array([0, seed], np.uint32))


def test_the_loop_advances_while_an_async_save_is_in_flight(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=True)
  state = big_state(1)
  ckpt.save(state, {'note': 'async'}, wait=False)
  in_flight = ckpt.saving()
  x = np.ones((256, 256), np.float32)
  for _ in range(5):   # "training" while the write goes on
    x = np.tanh(x @ x.T / 256)
  ckpt.wait()
  assert in_flight and not ckpt.saving()
  restored, config = ckpt.restore(state)
  ckpt.close()
  assert config == {'note': 'async'}
  np.testing.assert_array_equal(restored.params['net/linear']['w'], state.params['net/linear']['w'])


KILLED = textwrap.dedent(f'''
    import sys, time
    sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})
    from test_checkpoints_async import big_state
    from nfnet_jax.train import checkpoints
    ckpt = checkpoints.Checkpointer(sys.argv[1], async_save=True)
    ckpt.save(big_state(1, seed=1), {{}}, wait=True)
    ckpt.save(big_state(2, seed=2), {{}}, wait=False)
    print('in flight' if ckpt.saving() else 'already written', flush=True)
    time.sleep(120)
''')


def test_sigkill_during_an_async_save_keeps_the_previous_checkpoint(tmp_path):
  proc = subprocess.Popen([sys.executable, '-c', KILLED, str(tmp_path)], stdout=subprocess.PIPE,
                          text=True, cwd=REPO)
  line = proc.stdout.readline().strip()
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert line == 'in flight', line
  ckpt = checkpoints.Checkpointer(str(tmp_path))   # removes the half-written step 2
  assert ckpt.all_steps() == [1]
  restored, _ = ckpt.restore(big_state(1, seed=1))
  np.testing.assert_array_equal(restored.params['net/linear']['w'],
                                big_state(1, seed=1).params['net/linear']['w'])
  ckpt.save(big_state(2, seed=2), {})              # and the run can go on saving
  assert ckpt.all_steps() == [1, 2]
  ckpt.close()
