"""A dry run for another machine: validate a config for a device and process count, compile one
per-device train step on abstract shapes and report the layout, schedule, memory and paths.

Nothing runs and no data is read: the paths are only checked for existence (a URL this machine
cannot reach is reported as such), and a dataset that is not prepared here is sized from its
published split sizes (ImageNet) so a pod's config can be checked from a laptop.
"""

from __future__ import annotations

import concurrent.futures
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nfnet_jax import data as data_lib
from nfnet_jax import paths
from nfnet_jax.train import build as build_lib
from nfnet_jax.train import checkpoints
from nfnet_jax.train import config as config_lib
from nfnet_jax.train import step as step_lib

# Published split sizes, used when the dataset is not prepared on the machine doing the dry run.
PUBLISHED = {
    'imagenet2012': data_lib.DatasetInfo(
        name='imagenet2012', num_classes=1000, splits={'train': 1_281_167, 'validation': 50_000},
        train_split='train', eval_split='validation', name_key='file_name'),
}
PUBLISHED['imagenet'] = PUBLISHED['imagenet2012']
_CHECK_TIMEOUT_S = 90.0


def _check_path(path: str) -> tuple[bool | None, str]:
  """(exists, note): exists is None when this machine cannot tell (an unreachable URL)."""
  pool = concurrent.futures.ThreadPoolExecutor(1)
  try:
    return pool.submit(paths.exists, path).result(timeout=_CHECK_TIMEOUT_S), ''
  except concurrent.futures.TimeoutError:
    return None, f'no answer within {_CHECK_TIMEOUT_S:.0f} s'
  except Exception as e:  # pylint: disable=broad-except
    if not paths.is_url(path):
      raise
    return None, str(e).strip().splitlines()[0][:160]
  finally:
    pool.shutdown(wait=False)


def _dataset_info(config, notes: list[str]):
  """The dataset's info from its prepared metadata, else its published sizes (with a note)."""
  if config.dataset == 'digits':
    return data_lib.get_info('digits')
  data_dir = config.data_dir
  if data_dir:
    exists, why = _check_path(data_dir)
    if exists is False:
      raise config_lib.ConfigError(f'config.data_dir={data_dir!r} does not exist; prepare the '
                                   'dataset there (scripts/prepare_imagenet.py) or fix the path.')
    if exists is None:
      notes.append(f'data_dir {data_dir} not checked: unreachable from here ({why}).')
  else:
    notes.append('config.data_dir is not set: every host reads tfds\'s default dir '
                 '(~/tensorflow_datasets or $TFDS_DATA_DIR); on a pod give --config.data_dir=gs://...')
  if not data_dir or exists:
    try:
      return data_lib.get_info(config.dataset, data_dir)
    except FileNotFoundError as e:
      if data_dir:
        raise config_lib.ConfigError(f'config.dataset={config.dataset!r}: {e}') from None
  if config.dataset not in PUBLISHED:
    raise config_lib.ConfigError(
        f'config.dataset={config.dataset!r} is not prepared here and its split sizes are not '
        f'known; prepare it here or dry-run one of {sorted(PUBLISHED)}.')
  notes.append(f'{config.dataset} is not prepared here: sized from its published splits '
               f'({PUBLISHED[config.dataset].splits}).')
  return PUBLISHED[config.dataset]


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  fields = ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
            'temp_size_in_bytes', 'generated_code_size_in_bytes')
  out = {f: int(getattr(m, f, 0) or 0) for f in fields}
  out['peak_bytes'] = (out['argument_size_in_bytes'] + out['output_size_in_bytes']
                       - out['alias_size_in_bytes'] + out['temp_size_in_bytes'])
  return out


def dry_run(config: ml_collections.ConfigDict, workdir: str, *, devices: int, processes: int,
            memory_gb: float | None = None, compile_step: bool = True) -> dict:
  """Validates `config` for `devices` over `processes` and compiles one per-device train step.

  compile_step=False only traces and lowers the step (seconds instead of a compile; no memory
  estimate).

  Returns a report dict (see `format_report`). Raises config_lib.ConfigError with a one-line
  reason when the config cannot run on that topology, or (given memory_gb) does not fit.
  """
  if devices < 1 or processes < 1 or devices % processes:
    raise config_lib.ConfigError(f'--dry_run_devices={devices} must be a positive multiple of '
                                 f'--dry_run_processes={processes}.')
  local_devices = devices // processes
  notes: list[str] = []
  info = _dataset_info(config, notes)
  run = config_lib.validate(config, device_count=devices, info=info)
  c = config
  train_examples = info.splits[info.train_split]
  shard = train_examples // processes
  if shard < run.per_device_batch * local_devices * c.grad_accum_steps:
    raise config_lib.ConfigError(
        f'each of the {processes} processes would read {shard} training examples, fewer '
        f'than its {local_devices * c.grad_accum_steps * run.per_device_batch} per step.')

  workdir_exists, why = _check_path(workdir)
  resume = None
  if workdir_exists is None:
    notes.append(f'workdir {workdir} not checked: unreachable from here ({why}).')
  elif workdir_exists and paths.exists(checkpoints.checkpoint_dir(workdir)):
    ckpt = checkpoints.Checkpointer(workdir, read_only=True)
    resume = ckpt.latest_step()
    ckpt.close()

  model, optimizer, schedule = build_lib.build(run)
  init_fn = build_lib.initial_state_fn(run, model, optimizer)
  state = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  train_step = step_lib.make_train_step(
      model, optimizer, schedule=schedule, num_classes=info.num_classes,
      label_smoothing=c.label_smoothing, bf16=c.bf16, ema_decay=c.ema_decay, augment=c.augment,
      sam_rho=c.optimizer.sam_rho, sam_mode=c.optimizer.sam_mode)
  one = lambda x: jax.ShapeDtypeStruct((1,) + tuple(x.shape), x.dtype)  # one device's slice
  shape = (1, c.grad_accum_steps, run.per_device_batch)
  batch = {'images': jax.ShapeDtypeStruct(shape + (run.image_size, run.image_size, 3),
                                          jnp.bfloat16 if c.bf16 else jnp.float32),
           'labels': jax.ShapeDtypeStruct(shape, jnp.int32)}
  # Accelerators donate the state (updated in place), so compile with donation as they run it.
  p_step = jax.pmap(train_step, axis_name=step_lib.AXIS, donate_argnums=(0,),
                    devices=jax.local_devices()[:1])
  t0 = time.perf_counter()
  lowered = p_step.lower(jax.tree.map(one, state), batch)
  memory = _memory(lowered.compile()) if compile_step else {}
  compile_s = time.perf_counter() - t0
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  report = {
      'model': c.model, 'num_params': num_params, 'dataset': info.name,
      'devices': devices, 'processes': processes, 'local_devices': local_devices,
      'global_batch': c.batch_size, 'grad_accum_steps': c.grad_accum_steps,
      'per_device_batch': run.per_device_batch,
      'per_process_batch': local_devices * c.grad_accum_steps * run.per_device_batch,
      'image_size': run.image_size, 'eval_image_size': run.eval_image_size,
      'total_steps': run.total_steps, 'steps_per_epoch': run.steps_per_epoch,
      'epochs': run.total_steps / run.steps_per_epoch,
      'data_dir': c.data_dir, 'workdir': workdir,
      'checkpoint_dir': checkpoints.checkpoint_dir(workdir), 'resume_step': resume,
      'compile_s': compile_s, 'backend': jax.default_backend(), 'memory': memory, 'notes': notes,
  }
  if memory_gb is not None and compile_step:
    check_fits(report, memory_gb)
  return report


def check_fits(report: dict, memory_gb: float) -> None:
  """Raises ConfigError when the report's per-device peak exceeds `memory_gb` GiB."""
  need = report['memory'].get('peak_bytes', 0) / 2**30
  if need > memory_gb:
    raise config_lib.ConfigError(
        f'{report["model"]} at per-device batch {report["per_device_batch"]} '
        f'({report["image_size"]} px) needs about {need:.1f} GiB per device '
        f'(XLA:{report["backend"].upper()} estimate), more than the {memory_gb:g} GiB of the '
        f'target; raise config.grad_accum_steps (e.g. to {report["grad_accum_steps"] * 2}) or use '
        'more devices.')


def format_report(r: dict) -> str:
  """The report as the lines scripts/train.py --dry_run prints."""
  gib = lambda b: f'{b / 2**30:.2f} GiB'
  m = r['memory']
  lines = [
      f'dry run: {r["model"]} ({r["num_params"]:,} params) on {r["devices"]} devices in '
      f'{r["processes"]} processes ({r["local_devices"]} per process)',
      f'  global batch {r["global_batch"]} = {r["devices"]} devices x {r["grad_accum_steps"]} '
      f'micro-batches x {r["per_device_batch"]} per device; each process reads '
      f'{r["per_process_batch"]} {r["image_size"]} px images per step',
      f'  {r["total_steps"]:,} steps = {r["epochs"]:.1f} epochs of {r["steps_per_epoch"]:,} steps '
      f'over {r["dataset"]}',
  ]
  if m:
    lines.append(
        f'  per-device memory (XLA:{r["backend"].upper()} estimate for one step, state donated): '
        f'peak {gib(m["peak_bytes"])} = arguments {gib(m["argument_size_in_bytes"])} + outputs '
        f'{gib(m["output_size_in_bytes"])} - aliased {gib(m["alias_size_in_bytes"])} + temporaries '
        f'{gib(m["temp_size_in_bytes"])}; compiled in {r["compile_s"]:.0f} s')
  else:
    lines.append(f'  the step traced and lowered in {r["compile_s"]:.0f} s (not compiled: no memory '
                 'estimate)')
  lines += [f'  data_dir: {r["data_dir"] or "(tfds default)"}',
            f'  workdir: {r["workdir"]} (checkpoints in {r["checkpoint_dir"]}; '
            + (f'would resume from step {r["resume_step"]})' if r['resume_step'] is not None
               else 'starts from scratch)')]
  lines += [f'  note: {n}' for n in r['notes']]
  return '\n'.join(lines)
