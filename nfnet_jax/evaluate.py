"""Evaluation over a whole split with exact counts: top-1, top-5, loss and the number of examples.

Padding examples (mask False) contribute nothing; sums are taken per device, added on the host in
float64 and across processes at the end, so every example of the split is counted exactly once.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nfnet_jax import data as data_lib
from nfnet_jax import precision
from nfnet_jax.train import build as build_lib
from nfnet_jax.train import checkpoints
from nfnet_jax.train import config as config_lib
from nfnet_jax.train.step import cast_floating, smoothed_cross_entropy, topk_correct

_SUMS = ('loss', 'top1', 'top5', 'num_examples')


def make_eval_step(model, *, bf16: bool = False, cpu_bf16: bool = False) -> Callable:
  """Returns a pmapped fn(params, model_state, batch) -> per-device sums of loss/top1/top5/count.

  `bf16` computes in bfloat16 except on CPU, where only `cpu_bf16` does (`nfnet_jax.precision`).
  """
  dtype = precision.compute_dtype(bf16, cpu_bf16=cpu_bf16)

  def eval_step(params, model_state, batch):
    outputs, _ = model.apply(cast_floating(params, dtype), model_state, None,
                             batch['images'].astype(dtype), is_training=False)
    logits = outputs['logits'].astype(jnp.float32)
    labels = batch['labels']
    mask = batch['mask'].astype(jnp.float32)
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    return {'loss': jnp.sum(mask * smoothed_cross_entropy(logits, one_hot, 0.0)),
            'top1': jnp.sum(mask * topk_correct(logits, labels, 1)),
            'top5': jnp.sum(mask * topk_correct(logits, labels, 5)),
            'num_examples': jnp.sum(mask)}

  return jax.pmap(eval_step, axis_name='batch')


def replicate(tree: Any) -> Any:
  """Copies a host pytree onto every local device (leading axis = local devices), as pmap takes it."""
  devices = jax.local_devices()
  sharding = NamedSharding(Mesh(np.array(devices), ('batch',)), PartitionSpec('batch'))
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)),
                               sharding), tree)


def evaluate(p_eval_step: Callable, params: Any, model_state: Any,
             batches: Iterable[dict]) -> dict:
  """Scores every batch; params/model_state are replicated. Returns means and num_examples."""
  totals = np.zeros(len(_SUMS), np.float64)
  for batch in batches:
    sums = jax.device_get(p_eval_step(params, model_state, batch))
    totals += np.array([np.sum(np.asarray(sums[k], np.float64)) for k in _SUMS])
  if jax.process_count() > 1:
    totals = np.sum(multihost_utils.process_allgather(totals), axis=0)
  count = totals[-1]
  if count == 0:
    raise ValueError('the evaluation split yielded no examples.')
  result = {k: float(v / count) for k, v in zip(_SUMS[:-1], totals[:-1])}
  result['num_examples'] = int(round(count))
  return result


def evaluate_split(model, params: Any, model_state: Any, *, dataset: str, data_dir: str | None,
                   split: str, batch_size: int, image_size: int,
                   preprocess: str = 'resize_crop_32', bf16: bool = False,
                   p_eval_step: Callable | None = None) -> dict:
  """Evaluates unreplicated (host) params on a whole split of `dataset`."""
  p_eval_step = p_eval_step or make_eval_step(model, bf16=bf16)
  batches = data_lib.eval_iterator(dataset, data_dir=data_dir, split=split,
                                   global_batch_size=batch_size, image_size=image_size,
                                   preprocess=preprocess)
  return evaluate(p_eval_step, replicate(params), replicate(model_state), batches)


def write_json(result: dict, *paths: str | None) -> None:
  """Writes `result` as indented JSON to each given path (process 0 only)."""
  if jax.process_index() != 0:
    return
  for path in paths:
    if path:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      with open(path, 'w') as f:
        json.dump(result, f, indent=2, sort_keys=True)
        f.write('\n')


def evaluate_run(config, *, workdir: str | None = None, pretrained: str | None = None,
                 split: str | None = None, out: str | None = None) -> dict:
  """Evaluates a run's latest checkpoint (params and EMA params) or a pretrained params file.

  Returns {'params': {top1, top5, loss, num_examples}, 'ema_params': {...} (checkpoints only),
  'model', 'dataset', 'split', 'image_size', 'step'}; writes it as JSON to `out` and, for a
  workdir, to WORKDIR/eval.json.
  """
  from nfnet_jax import pretrained as pretrained_lib  # pylint: disable=import-outside-toplevel
  if (workdir is None) == (pretrained is None):
    raise ValueError('give exactly one of --workdir (a training run) or --pretrained (a params file).')
  run = config_lib.validate(config)
  split = split or run.eval_split
  if split not in run.info.splits:
    raise ValueError(f'--split={split!r} is not a split of {run.info.name}; it has '
                     f'{sorted(run.info.splits)}.')
  model, optimizer, _ = build_lib.build(run)
  init_fn = build_lib.initial_state_fn(run, model, optimizer)
  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  if workdir is not None:
    checkpointer = checkpoints.Checkpointer(workdir, read_only=True)
    if checkpointer.latest_step() is None:
      raise FileNotFoundError(f'no checkpoint in {checkpoints.checkpoint_dir(workdir)}; train first '
                              '(scripts/train.py with the same --workdir).')
    state, _ = checkpointer.restore(abstract)
    checkpointer.close()
    candidates = {'params': (state.params, state.model_state),
                  'ema_params': (state.ema_params, state.ema_model_state)}
    step = int(state.step)
  else:
    if jax.tree.leaves(abstract.model_state):
      raise ValueError(f'{config.model} has model state (BatchNorm statistics) that a params file '
                       'does not hold; evaluate its training run with --workdir instead.')
    params = pretrained_lib.load(pretrained)
    pretrained_lib.check_compatible(params, abstract.params, what=f'parameters in {pretrained}')
    candidates = {'params': (jax.tree.map(np.asarray, params), {})}
    step = None
  p_eval_step = make_eval_step(model, bf16=config.bf16)
  result = {'model': config.model, 'dataset': config.dataset, 'split': split,
            'image_size': run.eval_image_size, 'step': step}
  for name, (params, model_state) in candidates.items():
    result[name] = evaluate_split(
        model, params, model_state, dataset=config.dataset, data_dir=config.data_dir, split=split,
        batch_size=run.eval_batch_size, image_size=run.eval_image_size,
        preprocess=config.eval_preprocess, bf16=config.bf16, p_eval_step=p_eval_step)
  write_json(result, out, os.path.join(workdir, 'eval.json') if workdir else None)
  return result


def imagenet_class_names() -> list[str]:
  """The 1000 ImageNet class names in tfds imagenet2012 label order, as 'synset human-readable name'."""
  import inspect  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.datasets.siscore import labels as siscore_labels  # pylint: disable=import-outside-toplevel
  folder = os.path.dirname(inspect.getfile(tfds.builder_cls('imagenet2012')))
  with open(os.path.join(folder, 'labels.txt')) as f:
    synsets = f.read().split()
  return [f'{s} {n}' for s, n in zip(synsets, siscore_labels.IMAGENET_LABELS_LIST)]


def load_classifier(*, workdir: str | None = None, pretrained: str | None = None,
                    model: str | None = None, ema: bool = True):
  """(model name, hk model, params, model_state, config-like dict) from a run or a params file.

  A run's checkpoint knows its model, kwargs and dataset; a params file needs `model` (an
  ImageNet-1k variant such as 'nfnet_f0').
  """
  from nfnet_jax import models  # pylint: disable=import-outside-toplevel
  from nfnet_jax import pretrained as pretrained_lib  # pylint: disable=import-outside-toplevel
  if (workdir is None) == (pretrained is None):
    raise ValueError('give exactly one of --workdir (a training run) or --pretrained (a params file).')
  if workdir is not None:
    checkpointer = checkpoints.Checkpointer(workdir, read_only=True)
    try:
      if checkpointer.latest_step() is None:
        raise FileNotFoundError(f'no checkpoint in {checkpoints.checkpoint_dir(workdir)}; train first.')
      state, config = checkpointer.restore_raw(), checkpointer.restore_config()
    finally:
      checkpointer.close()
    info = data_lib.get_info(config['dataset'], config.get('data_dir'))
    name = model or config['model']
    net = models.create(name, num_classes=info.num_classes, **config.get('model_kwargs', {}))
    params = state['ema_params' if ema else 'params']
    model_state = state['ema_model_state' if ema else 'model_state']
    names = (imagenet_class_names() if info.num_classes == 1000 else
             info.class_names or [str(i) for i in range(info.num_classes)])
    size = config.get('eval_image_size') or models.get_spec(name).test_image_size
  else:
    if model is None:
      raise ValueError('--pretrained needs --model (e.g. --model=nfnet_f0).')
    name, net = model, models.create(model, num_classes=1000)
    params = pretrained_lib.load(pretrained, like=model)
    model_state, names = {}, imagenet_class_names()
    size = models.get_spec(model).test_image_size
  return name, net, params, model_state, names, size


def classify_files(paths: Iterable[str], net, params, model_state, *, class_names: list[str],
                   image_size: int, top_k: int = 5) -> list[list[tuple[str, float]]]:
  """Top-k (class name, probability) for each image file, preprocessed as for evaluation."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from nfnet_jax.data import preprocessing  # pylint: disable=import-outside-toplevel
  images = []
  for path in paths:
    encoded = tf.io.read_file(path)
    image = preprocessing.eval_image(encoded, image_size, 'resize_crop_32',
                                     is_jpeg=bool(tf.io.is_jpeg(encoded)))
    images.append(preprocessing.normalize(image[None])[0].numpy())
  outputs, _ = jax.jit(lambda p, s, x: net.apply(p, s, None, x, is_training=False))(
      params, model_state, np.stack(images))
  probs = np.asarray(jax.nn.softmax(outputs['logits'].astype(jnp.float32)))
  k = min(top_k, probs.shape[-1])
  return [[(class_names[i], float(p[i])) for i in np.argsort(-p)[:k]] for p in probs]
