"""train_and_evaluate(config, workdir): the training loop around the pmapped step."""

from __future__ import annotations

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from nfnet_jax import data as data_lib
from nfnet_jax import evaluate as eval_lib
from nfnet_jax import extras
from nfnet_jax import host_memory
from nfnet_jax import onednn
from nfnet_jax import optim
from nfnet_jax import precision
from nfnet_jax.train import config as config_lib
from nfnet_jax.train import init_from
from nfnet_jax.train.build import build, fused_update, initial_state_fn
from nfnet_jax.train import lock as lock_lib
from nfnet_jax.train import prefetch
from nfnet_jax.train.checkpoints import Checkpointer
from nfnet_jax.train.integrity import NonFiniteParamsError
from nfnet_jax.train.preemption import Preemption
from nfnet_jax.train.progress import Progress
from nfnet_jax.train.step import make_train_step, pmap_train_step
from nfnet_jax.train.writers import MetricWriter

ml_collections = extras.require('ml_collections', 'training (nfnet_jax.train)')


class NonFiniteLossError(FloatingPointError):
  """The loss or params became NaN or Inf; the run stopped without saving, listing the kept checkpoints."""


def _divergence_message(what: str, workdir: str, checkpointer: Checkpointer) -> str:
  checkpointer.wait()   # a save still in flight is one of the kept checkpoints
  kept = []
  for step, manifest in checkpointer.kept():
    facts = [f'{k.replace("_", " ")} {manifest[k]:.4g}' for k in ('train_loss', 'param_norm')
             if manifest and manifest.get(k) is not None]
    kept.append(f'step {step}' + (f' ({", ".join(facts)})' if facts else ''))
  return (f'{what}; stopped without saving. Kept checkpoints in {workdir}: '
          f'{"; ".join(kept) or "none"}. Resume from one before the instability with '
          '--resume_step=STEP and a lower --config.optimizer.lr (with --allow_config_change), '
          'or check the data.')


def config_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def _first_device(tree):
  """Host copy of device 0's replica; reads a local shard, so no collective runs (multi-host safe)."""
  return jax.tree.map(
      lambda x: np.asarray(x.addressable_shards[0].data).reshape(x.shape[1:]), tree)


def _log(is_main: bool, message: str) -> None:
  if is_main:
    print(message, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       resume_step: int | None = None, allow_config_change: bool = False) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final metrics.

  Returns {'step', 'train': {...}, 'eval': {NAME: {'params': {...}, 'ema_params': {...}}} for each
  eval set of config.evals, 'preempted': bool}. Raises
  config_lib.ConfigError before compiling anything when the config cannot run, and
  NonFiniteLossError naming the step when the loss becomes NaN or Inf. With `resume_step`, the
  run resumes from that kept checkpoint and the later ones are moved to WORKDIR/set_aside/.
  Resuming compares the saved config with `config` (config_lib.resume_changes): a model/optimizer/
  shape change is refused; other changes need `allow_config_change` and are logged.
  """
  run = config_lib.validate(config)
  is_main = jax.process_index() == 0
  with lock_lib.hold(workdir, log=lambda m: _log(is_main, m)):
    return _train(run, workdir, is_main, resume_step, allow_config_change)


def _train(run: config_lib.Run, workdir: str, is_main: bool, resume_step: int | None,
           allow_config_change: bool) -> dict:
  c = run.config
  model, optimizer, schedule = build(run)
  init_fn = initial_state_fn(run, model, optimizer)
  rng = jax.random.PRNGKey(c.seed)

  saved_config = dict(config_json(c), class_names=run.info.class_names)  # what evaluate.py reads
  checkpointer = Checkpointer(workdir, keep=c.keep_checkpoints, keep_period=c.keep_every_steps,
                              async_save=c.async_checkpoints, log=lambda m: _log(is_main, m))
  if resume_step is not None:
    try:
      moved = checkpointer.rewind(resume_step)
    except ValueError as e:
      raise config_lib.ConfigError(str(e)) from None
    if moved:
      _log(is_main, f'--resume_step={resume_step}: moved the later checkpoints to {", ".join(moved)}.')
  if checkpointer.latest_step() is not None:
    try:
      saved = checkpointer.restore_config(resume_step)
    except Exception:  # pylint: disable=broad-except
      saved = None     # a damaged newest checkpoint: restore() below names it and falls back
    if saved is not None:
      for change in config_lib.resume_changes(saved, saved_config, allow=allow_config_change,
                                              workdir=workdir):
        _log(is_main, f'--allow_config_change: resuming with {change}')
    state, _ = checkpointer.restore(jax.eval_shape(init_fn, rng), resume_step)
    _log(is_main, f'Resuming from the checkpoint at step {int(state.step)} in {workdir}.')
  else:
    state = init_from.initial_state(c, init_fn, optimizer, rng, workdir=workdir,
                                    log=lambda line: _log(is_main, line))
  # The first batch is read before anything compiles, so data errors surface at once.
  try:
    batches = data_lib.train_iterator(
        c.dataset, data_dir=c.data_dir, global_batch_size=c.batch_size, image_size=run.image_size,
        augment=c.augment, seed=c.seed, start_step=int(state.step),
        grad_accum_steps=c.grad_accum_steps, dtype=jnp.bfloat16 if c.bf16 else np.float32,
        folder_val_fraction=c.folder_val_fraction)
    first_batch = next(batches)
  except ValueError as e:
    raise config_lib.ConfigError(
        f'config.dataset={c.dataset!r} with config.augment={c.augment!r}: {e}') from None
  batches = prefetch.to_device(itertools.chain([first_batch], batches), c.device_prefetch)
  eval_sets = eval_lib.resolve_eval_sets(run) if c.eval_every_steps > 0 else []

  step = int(state.step)
  num_params = sum(int(np.size(x)) for x in jax.tree.leaves(state.params))
  _log(is_main, f'{c.model}: {num_params:,} params | {c.dataset} | global batch {c.batch_size} = '
       f'{jax.device_count()} devices x {c.grad_accum_steps} micro-batches x '
       f'{run.per_device_batch} | {run.total_steps} steps ({run.steps_per_epoch} per epoch) | '
       f'{jax.process_count()} process(es)')
  if c.trainable:
    _log(is_main, optim.describe_trainable(state.params, c.trainable))
  for note in (onednn.describe(), host_memory.describe(), precision.note(c.bf16)):
    if note:
      _log(is_main, note)

  fused = fused_update(run)
  if fused is not None:
    _log(is_main, 'update: AGC, weight decay, Nesterov SGD and EMA in one pass per parameter '
         '(nfnet_jax.sgd_update; NFNET_JAX_FUSED_UPDATE=0 for optax\'s)')
  train_step = make_train_step(
      model, optimizer, schedule=schedule, num_classes=run.info.num_classes,
      label_smoothing=c.label_smoothing, bf16=c.bf16, ema_decay=c.ema_decay, augment=c.augment,
      sam_rho=c.optimizer.sam_rho, sam_mode=c.optimizer.sam_mode, fused_update=fused)
  p_train_step = pmap_train_step(train_step)
  p_eval_step = eval_lib.make_eval_step(model, bf16=c.bf16)
  state = eval_lib.replicate(state)

  writer = MetricWriter(workdir, enabled=is_main, start_step=step, tensorboard=c.tensorboard)
  progress = Progress(run.total_steps, c.batch_size, enabled=is_main)

  def save(state, wait):
    try:
      checkpointer.save(_first_device(state), saved_config, train_loss=last_loss[0], wait=wait)
    except NonFiniteParamsError as e:
      raise NonFiniteLossError(_divergence_message(str(e), workdir, checkpointer)) from None

  result = {'step': step, 'train': {}, 'eval': {}, 'preempted': False}
  pending = []           # (step, device metrics) not yet checked for NaN/Inf
  last_loss = [None]     # the training loss of the latest checked step
  window = []            # host metrics since the last log line
  progress.start(step)

  def check_pending():
    fetched = jax.device_get([m for _, m in pending])
    for (s, _), m in zip(pending, fetched):
      loss = float(np.asarray(m['loss'])[0])
      if not math.isfinite(loss):
        raise NonFiniteLossError(_divergence_message(
            f'the training loss became {loss} at step {s}', workdir, checkpointer))
      window.append({k: float(np.asarray(v)[0]) for k, v in m.items()})
      last_loss[0] = loss
    pending.clear()

  try:
    with Preemption(step) as preemption:
      while step < run.total_steps:
        state, metrics = p_train_step(state, next(batches))
        step += 1
        pending.append((step, metrics))
        last = step == run.total_steps
        log_now = step % c.log_every_steps == 0 or last
        stop = preemption.reached(step, log_now)   # the same step on every host
        save_now = step % c.checkpoint_every_steps == 0 or last or stop
        eval_now = c.eval_every_steps > 0 and (step % c.eval_every_steps == 0 or last)
        if log_now or save_now or eval_now:
          check_pending()
        if log_now:
          means = {k: float(np.mean([w[k] for w in window])) for k in window[-1]}
          means.update(progress.update(step, means))
          writer.write(step, means, prefix='train/')
          result['train'] = means
          window.clear()
        if save_now:  # async saves overlap the next steps; the last and a preemption's are waited for
          save(state, wait=last or stop)
        if eval_now and eval_sets:
          result['eval'] = eval_lib.evaluate_sets(p_eval_step, eval_sets, {
              'params': (state.params, state.model_state),
              'ema_params': (state.ema_params, state.ema_model_state)})
          writer.write(step, eval_lib.metrics_to_log(result['eval']), prefix='eval/')
          for line in eval_lib.summary_lines(result['eval'], eval_sets):
            _log(is_main, f'step {step}: {line}')
        if stop:
          _log(is_main, f'SIGTERM: saved the checkpoint at step {step} in {workdir}; exiting. '
               'Run the same command again to resume.')
          result['preempted'] = True
          break
  finally:
    writer.close()
    checkpointer.close()
  result['step'] = step
  result['state'] = _first_device(state)
  return result
