"""Starting a run from other weights: config.init_from, init_from_ema and init_head.

`config.init_from` is a params file (anything `nfnet_jax.pretrained.load` reads: DeepMind's
release, an exported .npz) or another run's workdir (its latest checkpoint; `init_from_ema` takes
its EMA params). It sets the initial params only: the optimizer state is fresh and the step is 0.
The classifier (the one top-level module with a 2-D weight, `optim.classifier_module`) follows
`init_head`:
  'auto'  (default) keep the file's head when every head param fits, else initialise it afresh;
  'reset' always initialise it afresh (new classes with the same count);
  'keep'  take it from the file, and refuse the file when it does not fit.
Every other model param must be in the file with the model's shape, or the file is refused with
the names of every missing and mis-shaped param, before anything compiles. Params the file has
and the model does not use are reported, not loaded.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jax
import numpy as np

from nfnet_jax import optim
from nfnet_jax import paths
from nfnet_jax import pretrained
from nfnet_jax.train import checkpoints
from nfnet_jax.train import config as config_lib


class InitFromError(config_lib.ConfigError):
  """config.init_from cannot be used for this model; the message names every param at fault."""


@dataclasses.dataclass(frozen=True)
class Report:
  """What a start from weights did: loaded, reset (with the reason) and unused params."""
  source: str
  loaded: list[str]
  reset: dict[str, str]        # path -> why it was freshly initialised
  unused: dict[str, tuple]     # path in the file -> its shape
  notes: list[str]

  def lines(self) -> list[str]:
    out = [f'init_from {self.source}: loaded {len(self.loaded)} params, reset {len(self.reset)}, '
           f'{len(self.unused)} in the file unused.']
    out += [f'  reset   {k}: {why}' for k, why in self.reset.items()]
    out += [f'  unused  {k} {_shape_str(s)}' for k, s in self.unused.items()]
    out += [f'  note    {n}' for n in self.notes]
    return out

  def to_json(self) -> dict:
    return {'source': self.source, 'loaded': self.loaded, 'reset': self.reset,
            'unused': {k: list(s) for k, s in self.unused.items()}, 'notes': self.notes}


def _shape_str(shape) -> str:
  return '(' + ', '.join(str(int(d)) for d in shape) + ')'


def _flat(tree) -> dict[str, Any]:
  return {f'{m}/{n}': v for m, leaves in tree.items() for n, v in leaves.items()}


def _nested(flat: dict[str, Any]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    module, _, name = path.rpartition('/')
    out.setdefault(module, {})[name] = v
  return out


def read_source(path: str, ema: bool) -> tuple[dict, dict | None, str]:
  """(params, model_state or None, description) from a params file or a run's latest checkpoint."""
  if not paths.isdir(path):
    return pretrained.load(path), None, path
  ckpt = checkpoints.Checkpointer(path, read_only=True)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise InitFromError(f'config.init_from={path!r}: no checkpoint in '
                          f'{checkpoints.checkpoint_dir(path)}; train that run first.')
    state = ckpt.restore_raw(step)
  finally:
    ckpt.close()
  which = 'ema_' if ema else ''
  return (state[f'{which}params'], state.get(f'{which}model_state') or {},
          f'{path} (checkpoint step {step}, {"EMA " if ema else ""}params)')


def match(file_params: dict, model_params: dict, *, init_head: str = 'auto',
          source: str = 'the file', has_head: bool = True) -> tuple[dict[str, np.ndarray], Report]:
  """Which model params come from the file: ({path: array to load}, Report).

  `model_params` may hold arrays or shape structs. Raises InitFromError naming every non-head
  param that is missing or mis-shaped (and head params too with init_head='keep').
  has_head=False (e.g. for BatchNorm statistics) treats every entry as a body param.
  """
  have = {k: np.asarray(v) for k, v in _flat(file_params).items()}
  want = {k: tuple(v.shape) for k, v in _flat(model_params).items()}
  head = optim.classifier_module(model_params) if has_head else None
  in_head = lambda k: k.rpartition('/')[0] == head

  def misfit(k):
    if k not in have:
      return 'not in the file'
    if tuple(have[k].shape) != want[k]:
      return f'the file has {_shape_str(have[k].shape)}, the model {_shape_str(want[k])}'
    return None

  body = {k: misfit(k) for k in want if not in_head(k) and misfit(k)}
  head_misfit = {k: misfit(k) for k in want if in_head(k) and misfit(k)}
  if init_head == 'keep':
    body.update(head_misfit)
  if body:
    lines = [f'config.init_from={source!r} does not fit the model: {len(body)} of {len(want)} '
             'params are missing or mis-shaped (nothing was loaded):']
    lines += [f'  {k}: {why}' for k, why in sorted(body.items())]
    unused = sorted(set(have) - set(want))
    if unused:
      lines.append(f'  the file has {len(unused)} params the model lacks, e.g. {", ".join(unused[:5])}')
    lines.append('Check config.model and config.model_kwargs against the run that wrote the file.')
    raise InitFromError('\n'.join(lines))

  reset = {}
  if init_head == 'reset':
    reset = {k: "init_head='reset'" for k in want if in_head(k)}
  elif head_misfit:
    reset = {k: f"{head_misfit.get(k) or 'reset with the rest of the head'} (init_head='auto': "
                'the head is initialised afresh)' for k in want if in_head(k)}
  loaded = {k: have[k] for k in want if k not in reset}
  unused = {k: tuple(have[k].shape) for k in sorted(set(have) - set(want))}
  return loaded, Report(source=source, loaded=sorted(loaded), reset=reset, unused=unused, notes=[])


def _merge(tree: dict, loaded: dict[str, np.ndarray]) -> dict:
  flat = _flat(jax.tree.map(np.asarray, tree))
  for k, v in loaded.items():
    flat[k] = v.astype(flat[k].dtype)
  return _nested(flat)


def initial_state(config, init_fn: Callable, optimizer, rng: jax.Array, *,
                  workdir: str | None = None, log: Callable[[str], None] = print):
  """The run's step-0 TrainState (host arrays): init_fn(rng), with params from config.init_from.

  With init_from, reads and matches the file (raising InitFromError) before `init_fn` compiles,
  then logs the Report's lines and writes it to WORKDIR/init_from.json.
  """
  if not config.init_from:
    return jax.device_get(init_fn(rng))
  abstract = jax.eval_shape(init_fn, rng)
  file_params, file_state, source = read_source(config.init_from, config.init_from_ema)
  loaded, report = match(file_params, abstract.params, init_head=config.init_head, source=source)
  state_loaded, notes = {}, []
  if jax.tree.leaves(abstract.model_state):
    if file_state is None:
      notes.append('model state (BatchNorm statistics) freshly initialised: a params file has none.')
    else:
      try:
        state_loaded, _ = match(file_state, abstract.model_state, source=source, has_head=False)
      except InitFromError:
        notes.append('model state (BatchNorm statistics) freshly initialised: the run\'s does not fit.')
      else:
        notes.append(f'model state: {len(state_loaded)} arrays loaded.')
  report = dataclasses.replace(report, source=source, notes=notes)
  state = jax.device_get(init_fn(rng))
  params = _merge(state.params, loaded)
  model_state = _merge(state.model_state, state_loaded) if state_loaded else state.model_state
  state = state._replace(params=params, ema_params=params, model_state=model_state,
                         ema_model_state=model_state,
                         opt_state=jax.device_get(jax.jit(optimizer.init)(params)))
  for line in report.lines():
    log(line)
  if workdir is not None:
    write_report(report, workdir)
  return state


def write_report(report: Report, workdir: str) -> None:
  """Writes WORKDIR/init_from.json (process 0 only)."""
  if jax.process_index() != 0:
    return
  paths.write_text(paths.join(workdir, 'init_from.json'), json.dumps(report.to_json(), indent=2) + '\n')
