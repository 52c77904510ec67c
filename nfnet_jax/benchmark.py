"""Speed and memory measurements: train step, eval step, input pipeline, and the machine's matmul peak.

Every timed function warms up (the first calls include compilation and are reported separately), then times
``steps`` calls, blocking on the results, and reports the median and the minimum. Model FLOPs utilisation (MFU)
divides the model's own FLOPs (2 per multiply-add from :mod:`nfnet_jax.flops`; a training step counts as three
forward passes) by the step time and by the matmul rate measured on the same machine in the same run.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nfnet_jax import flops as flops_lib
from nfnet_jax import host_memory
from nfnet_jax import models
from nfnet_jax import precision

EMA_DECAY = 0.99999  # the train step keeps an EMA of the weights, as the trainer does


class Remote:
  """A call that runs elsewhere (e.g. another process) and returns the seconds it took there."""

  def __init__(self, run: Callable[[], float], close: Callable[[], Any] = lambda: None):
    self.run, self.close = run, close


def _seconds(fn: Callable[[], Any] | Remote) -> float:
  if isinstance(fn, Remote):
    return fn.run()
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def time_alternating(fns: Sequence[Callable[[], Any] | Remote], *, warmup: int = 2, steps: int = 10) -> list[dict]:
  """Times several functions taking turns (A B, B A, A B, ...), so drifts of machine speed hit all alike.

  Each runs ``warmup`` times untimed, then ``steps`` times timed; returns, per function, its median
  and min seconds and all times. A `Remote` is timed where it runs.
  """
  if steps < 1 or warmup < 0:
    raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}.")
  for _ in range(warmup):
    for fn in fns:
      _seconds(fn)
  times = [[] for _ in fns]
  for step in range(steps):
    order = range(len(fns)) if step % 2 == 0 else reversed(range(len(fns)))
    for i in order:
      times[i].append(_seconds(fns[i]))
  return [{"median_s": statistics.median(t), "min_s": min(t), "times_s": t} for t in times]


def time_calls(fn: Callable[[], Any] | Remote, *, warmup: int = 2, steps: int = 10) -> dict:
  """Runs ``fn`` ``warmup`` times untimed, then ``steps`` times timed; returns median/min seconds and all times."""
  return time_alternating([fn], warmup=warmup, steps=steps)[0]


def matmul_flops_per_s(size: int = 2048, dtype: str = "float32", *, warmup: int = 2, steps: int = 10,
                       device: Optional[jax.Device] = None) -> dict:
  """The device's dense matmul rate: median and best FLOP/s of a jitted ``size``² @ ``size``² product."""
  device = device or jax.devices()[0]
  a = jax.device_put(jnp.ones((size, size), dtype), device)
  b = jax.device_put(jnp.full((size, size), 0.5, dtype), device)
  matmul = jax.jit(jnp.matmul)
  timing = time_calls(lambda: matmul(a, b), warmup=warmup, steps=steps)
  work = 2.0 * size**3
  return {"size": size, "dtype": dtype, "median_flops_per_s": work / timing["median_s"],
          "best_flops_per_s": work / timing["min_s"]}


def _memory(compiled) -> dict:
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")
  return {f: int(getattr(stats, f)) for f in fields if hasattr(stats, f)}


def _xla_flops(compiled) -> Optional[float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


@dataclasses.dataclass
class StepConfig:
  """What one train/eval benchmark runs.

  Attributes:
    model: registered model name.
    batch_size: global batch (split over devices and gradient-accumulation micro-batches).
    image_size: input height = width.
    dtype: 'float32' or 'bfloat16' compute (master weights stay float32).
    num_devices: local devices to pmap over.
    grad_accum: micro-batches per step (train only).
    clipping: AGC clipping threshold; None trains with the same Nesterov SGD without AGC.
    model_kwargs: constructor overrides, e.g. {'remat': True}.
    num_classes: classifier width.
    cpu_bf16: on CPU compute bfloat16 anyway (XLA:CPU emulates it; see `nfnet_jax.precision`).
    sam_rho: SAM's ρ (train only; 0: no SAM); a SAM step runs two forward-backward passes.
  """
  model: str
  batch_size: int = 8
  image_size: int = 128
  dtype: str = "float32"
  num_devices: int = 1
  grad_accum: int = 1
  clipping: Optional[float] = 0.01
  model_kwargs: dict = dataclasses.field(default_factory=dict)
  num_classes: int = 1000
  cpu_bf16: bool = False
  sam_rho: float = 0.0

  def validate(self) -> None:
    if self.model not in models.available():
      raise ValueError(f"unknown model {self.model!r}; choose from {models.available()}.")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}.")
    if not 1 <= self.num_devices <= jax.local_device_count():
      raise ValueError(f"num_devices={self.num_devices} but only {jax.local_device_count()} local devices; on CPU "
                       "set XLA_FLAGS=--xla_force_host_platform_device_count=N before starting Python.")
    if self.batch_size % (self.num_devices * self.grad_accum):
      raise ValueError(f"batch_size={self.batch_size} is not divisible by num_devices*grad_accum="
                       f"{self.num_devices * self.grad_accum}.")
    min_size = models.get_spec(self.model).min_image_size
    if self.image_size < min_size:
      raise ValueError(f"{self.model} needs image_size >= {min_size}, got {self.image_size}.")
    models.create(self.model, num_classes=self.num_classes, **self.model_kwargs)  # rejects unknown options

  def compute_dtype(self) -> str:
    """The dtype the step computes in here (`nfnet_jax.precision`)."""
    bf16 = self.dtype == "bfloat16"
    name = jnp.dtype(precision.compute_dtype(bf16, cpu_bf16=self.cpu_bf16)).name
    return name + "+bf16convs" if precision.bf16_convs(bf16, cpu_bf16=self.cpu_bf16) else name

  def per_device(self) -> int:
    return self.batch_size // (self.num_devices * self.grad_accum)


def _stack(tree: Any, n: int) -> Any:
  """One copy per device along a new leading axis (host side)."""
  return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree)


def _put(tree: Any, devices: Sequence[jax.Device]) -> Any:
  """Places the leading axis of every leaf across ``devices``, the layout pmap takes without a copy."""
  mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
  return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))


def _peak(matmul: dict, num_devices: int) -> float:
  # Host CPU "devices" share the same cores, so their joint peak is the single-device rate.
  platform = jax.devices()[0].platform
  return matmul["median_flops_per_s"] * (1 if platform == "cpu" else num_devices)


def _speed(cfg: StepConfig, timing: dict, flops_per_step: float, peak: float) -> dict:
  return {"compute_dtype": cfg.compute_dtype(), "median_s": timing["median_s"], "min_s": timing["min_s"],
          "times_s": timing["times_s"],
          "images_per_s": cfg.batch_size / timing["median_s"],
          "images_per_s_best": cfg.batch_size / timing["min_s"],
          "model_flops_per_step": flops_per_step,
          "mfu": flops_per_step / timing["median_s"] / peak}


def _compiled_train_step(cfg: StepConfig):
  """Builds and compiles the trainer's pmapped step for ``cfg``.

  Returns (compiled, state, batch, compile_s, update): `update` is 'fused' where the step runs
  `optim.create_fused`'s update (on CPU, as the trainer does) and 'optax' where optax's chain.
  """
  from nfnet_jax import optim  # local: keeps `models`/`flops` users free of optimizer imports
  from nfnet_jax.train import state as state_lib
  from nfnet_jax.train import step as step_lib

  cfg.validate()
  devices = jax.local_devices()[:cfg.num_devices]
  model = models.create(cfg.model, num_classes=cfg.num_classes, **cfg.model_kwargs)
  opt_config = optim.get_config()
  opt_config.clipping = cfg.clipping
  steps_per_epoch = 1000
  schedule_args = dict(global_batch_size=cfg.batch_size, total_steps=100 * steps_per_epoch,
                       steps_per_epoch=steps_per_epoch)
  optimizer = optim.create(opt_config, **schedule_args)
  schedule = optim.create_schedule(opt_config, **schedule_args)
  fused = optim.create_fused(opt_config, **schedule_args)  # weights stay float32: the step uses it
  step_fn = step_lib.make_train_step(model, optimizer, schedule=schedule, num_classes=cfg.num_classes,
                                     label_smoothing=0.1, bf16=cfg.dtype == "bfloat16", ema_decay=EMA_DECAY,
                                     augment="none", sam_rho=cfg.sam_rho, cpu_bf16=cfg.cpu_bf16,
                                     fused_update=fused)
  image_shape = (cfg.per_device(), cfg.image_size, cfg.image_size, 3)
  state = jax.jit(lambda rng: state_lib.init_state(model, optimizer, rng, image_shape))(jax.random.PRNGKey(0))
  state = _put(_stack(state, len(devices)), devices)
  rng = np.random.default_rng(0)
  shape = (cfg.num_devices, cfg.grad_accum, cfg.per_device(), cfg.image_size, cfg.image_size, 3)
  batch = {"images": rng.standard_normal(shape, dtype=np.float32),
           "labels": rng.integers(0, cfg.num_classes, shape[:3]).astype(np.int32)}
  batch = _put(batch, devices)
  p_step = step_lib.pmap_train_step(step_fn, devices)
  start = time.perf_counter()
  compiled = p_step.lower(state, batch).compile()
  return compiled, state, batch, time.perf_counter() - start, "optax" if fused is None else "fused"


def _train_flops(cfg: StepConfig) -> float:
  fwd_macs = flops_lib.count_flops(cfg.model, cfg.image_size, num_classes=cfg.num_classes, **cfg.model_kwargs)
  passes = 2 if cfg.sam_rho else 1  # SAM: a second forward-backward at the ascended point
  return 6.0 * fwd_macs * cfg.batch_size * passes  # 2 FLOPs/MAC x (forward + backward = 3 forwards)


def compile_train_step(cfg: StepConfig, matmul: Optional[dict] = None, **unused) -> dict:
  """Compiles the train step without running it: compile time, XLA memory analysis and XLA's FLOP count."""
  compiled, _, _, compile_s, update = _compiled_train_step(cfg)
  xla = _xla_flops(compiled)
  return {"kind": "compile", **dataclasses.asdict(cfg), "update": update, "compile_s": compile_s,
          "xla_flops_per_step": None if xla is None else xla * cfg.num_devices,
          "model_flops_per_step": _train_flops(cfg), "memory": _memory(compiled)}


def _train_runner(cfg: StepConfig):
  """Compiles the train step; returns (a function running one step on its own state, the record builder)."""
  compiled, state, batch, compile_s, update = _compiled_train_step(cfg)
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], batch)
    return metrics

  def record(timing: dict, matmul: dict) -> dict:
    xla = _xla_flops(compiled)
    return {"kind": "train", **dataclasses.asdict(cfg), "update": update, "compile_s": compile_s,
            "xla_flops_per_step": None if xla is None else xla * cfg.num_devices,
            "memory": _memory(compiled), **_speed(cfg, timing, _train_flops(cfg), _peak(matmul, cfg.num_devices))}

  return run, record


def train_step(cfg: StepConfig, matmul: dict, *, warmup: int = 2, steps: int = 10) -> dict:
  """Times the trainer's full pmapped step (forward, label-smoothed CE, backward, AGC, Nesterov SGD, EMA)."""
  run, record = _train_runner(cfg)
  return record(time_calls(run, warmup=warmup, steps=steps), matmul)


def _eval_runner(cfg: StepConfig):
  """Compiles the evaluator's step; returns (a function running it on one batch, the record builder)."""
  from nfnet_jax import evaluate as evaluate_lib  # local: pulls in the data pipeline

  cfg.validate()
  devices = jax.local_devices()[:cfg.num_devices]
  model = models.create(cfg.model, num_classes=cfg.num_classes, **cfg.model_kwargs)
  per_device = cfg.batch_size // cfg.num_devices
  images = jnp.zeros((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
  params, model_state = jax.jit(lambda r: model.init(r, images, is_training=True))(jax.random.PRNGKey(0))
  params = _put(_stack(params, len(devices)), devices)
  model_state = _put(_stack(model_state, len(devices)), devices)
  rng = np.random.default_rng(0)
  shape = (cfg.num_devices, per_device, cfg.image_size, cfg.image_size, 3)
  batch = {"images": rng.standard_normal(shape, dtype=np.float32),
           "labels": rng.integers(0, cfg.num_classes, shape[:2]).astype(np.int32),
           "mask": np.ones(shape[:2], bool)}
  batch = _put(batch, devices)
  p_eval = evaluate_lib.make_eval_step(model, bf16=cfg.dtype == "bfloat16", cpu_bf16=cfg.cpu_bf16)
  start = time.perf_counter()
  compiled = p_eval.lower(params, model_state, batch).compile()
  compile_s = time.perf_counter() - start

  def record(timing: dict, matmul: dict) -> dict:
    fwd_macs = flops_lib.count_flops(cfg.model, cfg.image_size, num_classes=cfg.num_classes, **cfg.model_kwargs)
    return {"kind": "eval", **dataclasses.asdict(cfg), "compile_s": compile_s, "memory": _memory(compiled),
            **_speed(cfg, timing, 2.0 * fwd_macs * cfg.batch_size, _peak(matmul, cfg.num_devices))}

  return (lambda: compiled(params, model_state, batch)), record


def eval_step(cfg: StepConfig, matmul: dict, *, warmup: int = 2, steps: int = 10) -> dict:
  """Times the evaluator's pmapped inference step (forward in eval mode plus loss/top-k sums)."""
  run, record = _eval_runner(cfg)
  return record(time_calls(run, warmup=warmup, steps=steps), matmul)


def input_pipeline(dataset: str, *, data_dir: Optional[str], batch_size: int, image_size: int, augment: str,
                   num_devices: int = 1, grad_accum: int = 1, warmup: int = 2, steps: int = 10) -> dict:
  """Batches per second of ``nfnet_jax.data.train_iterator`` (host side only, no model)."""
  from nfnet_jax import data as data_lib  # local: tf/tfds are heavy and only needed here

  iterator = data_lib.train_iterator(dataset, data_dir=data_dir, global_batch_size=batch_size,
                                     image_size=image_size, augment=augment, seed=0,
                                     grad_accum_steps=grad_accum, local_devices=num_devices)
  timing = time_calls(lambda: next(iterator), warmup=warmup, steps=steps)
  return {"kind": "input", "dataset": dataset, "batch_size": batch_size, "image_size": image_size,
          "augment": augment, "median_s": timing["median_s"], "min_s": timing["min_s"],
          "times_s": timing["times_s"], "images_per_s": batch_size / timing["median_s"],
          "images_per_s_best": batch_size / timing["min_s"]}


def checkpoint_stall(cfg: StepConfig, workdir: str, *, saves: int = 3, between: int = 4) -> dict:
  """The step-time hiccup of a checkpoint save, synchronous against asynchronous, in one process.

  Runs the trainer's step and, every ``between`` steps, saves the state with
  ``train.checkpoints.Checkpointer`` alternately waiting for the write (sync) and not (async).
  Reports each mode's time of the step that saved and of the step after it, over the median of
  the steps that did not save.
  """
  from nfnet_jax.train import checkpoints  # local: orbax is only needed here

  compiled, state, batch, _, _ = _compiled_train_step(cfg)
  first = lambda tree: jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)
  modes = {'sync': [], 'async': []}
  plain = []
  ckpt = checkpoints.Checkpointer(workdir, keep=2, async_save=True)
  mode_after = None
  for _ in range(2):  # warm-up
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  for i in range(1, 2 * saves * between + 1):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    mode = None
    if i % between == 0:
      mode = 'sync' if (i // between) % 2 else 'async'
      ckpt.save(first(state), {}, wait=mode == 'sync')
    elapsed = time.perf_counter() - start
    if mode:
      modes[mode].append([elapsed])
    elif mode_after:
      modes[mode_after][-1].append(elapsed)
    else:
      plain.append(elapsed)
    mode_after = mode
  ckpt.close()
  median = statistics.median(plain)
  return {"kind": "checkpoint", **dataclasses.asdict(cfg), "median_step_s": median,
          "state_mib": sum(np.asarray(x).nbytes for x in jax.tree.leaves(first(state))) / 2**20,
          **{f"{m}_save_step_ratio": [t[0] / median for t in v] for m, v in modes.items()},
          **{f"{m}_next_step_ratio": [t[1] / median for t in v if len(t) > 1] for m, v in modes.items()}}


def agc_share(cfg: StepConfig, matmul: dict, *, warmup: int = 2, steps: int = 10) -> dict:
  """AGC's share of a train step: the full step against the same step with AGC switched off.

  The two compiled steps take turns (`time_alternating`), so drifts of the machine's speed hit both.
  """
  run_with, record_with = _train_runner(dataclasses.replace(cfg, clipping=cfg.clipping or 0.01))
  run_without, record_without = _train_runner(dataclasses.replace(cfg, clipping=None))
  timing_with, timing_without = time_alternating([run_with, run_without], warmup=warmup, steps=steps)
  with_agc, without = record_with(timing_with, matmul), record_without(timing_without, matmul)
  return {"kind": "agc", "model": cfg.model, "with_agc": with_agc, "without_agc": without,
          "agc_share_median": 1.0 - without["median_s"] / with_agc["median_s"],
          "agc_share_min": 1.0 - without["min_s"] / with_agc["min_s"]}


def _mib(n: Optional[int]) -> str:
  return "-" if n is None else f"{n / 2**20:.0f}"


def _memory_columns(mem: dict) -> str:
  """temp, arguments and peak (arguments + outputs not aliased to them + temp) in MiB."""
  peak = None
  if "temp_size_in_bytes" in mem:
    peak = (mem["argument_size_in_bytes"] + mem["output_size_in_bytes"] - mem["alias_size_in_bytes"]
            + mem["temp_size_in_bytes"])
  return (f"{_mib(mem.get('temp_size_in_bytes')):>8} {_mib(mem.get('argument_size_in_bytes')):>7} "
          f"{_mib(peak):>8}")


def format_table(results: Sequence[dict], matmul: dict) -> str:
  """A readable table of benchmark results."""
  lines = [f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), "
           f"matmul {matmul['size']}^2 {matmul['dtype']}: {matmul['median_flops_per_s'] / 1e9:.1f} GFLOP/s "
           f"(best {matmul['best_flops_per_s'] / 1e9:.1f})",
           f"{'kind':<6} {'model':<16} {'setting':<34} {'median s':>9} {'min s':>8} {'img/s':>7} {'MFU':>6} "
           f"{'compile s':>9} {'temp MiB':>8} {'arg MiB':>7} {'peak MiB':>8}"]
  rows = []
  for r in results:
    if r["kind"] == "agc":
      rows += [r["with_agc"], r["without_agc"]]
    else:
      rows.append(r)
  for r in rows:
    if r["kind"] == "compile":
      mem = r.get("memory", {})
      setting = f"b{r['batch_size']} {r['image_size']}px {r['dtype']} d{r['num_devices']} acc{r['grad_accum']}" + "".join(
          f" {k}={v}" for k, v in sorted(r["model_kwargs"].items()))
      lines.append(f"{'compile':<6} {r['model']:<16} {setting:<34} {'-':>9} {'-':>8} {'-':>7} {'-':>6} "
                   f"{r['compile_s']:>9.1f} {_memory_columns(mem)}")
      continue
    if r["kind"] == "checkpoint":
      ratios = lambda xs: ", ".join(f"{x:.2f}" for x in xs)
      lines.append(f"checkpoint {r['model']} b{r['batch_size']} {r['image_size']}px: step "
                   f"{r['median_step_s']:.3f} s, state {r['state_mib']:.0f} MiB; step with a save / "
                   f"median step: sync {ratios(r['sync_save_step_ratio'])}, async "
                   f"{ratios(r['async_save_step_ratio'])}; the step after: sync "
                   f"{ratios(r['sync_next_step_ratio'])}, async {ratios(r['async_next_step_ratio'])}")
      continue
    if r["kind"] == "input":
      setting = f"b{r['batch_size']} {r['image_size']}px {r['augment']}"
      lines.append(f"{'input':<6} {r['dataset']:<16} {setting:<34} {r['median_s']:>9.4f} {r['min_s']:>8.4f} "
                   f"{r['images_per_s']:>7.1f}")
      continue
    extras = "".join(f" {k}={v}" for k, v in sorted(r["model_kwargs"].items()))
    dtype = r['dtype'] + ("" if r.get("compute_dtype", r["dtype"]) == r["dtype"] else f"->{r['compute_dtype']}")
    setting = (f"b{r['batch_size']} {r['image_size']}px {dtype} d{r['num_devices']}"
               + (f" acc{r['grad_accum']}" if r["kind"] == "train" else "")
               + (" noAGC" if r["kind"] == "train" and r["clipping"] is None else "")
               + (" fused" if r.get("update") == "fused" else "")
               + (f" SAM {r['sam_rho']:g}" if r.get("sam_rho") else "") + extras)
    mem = r.get("memory", {})
    lines.append(f"{r['kind']:<6} {r['model']:<16} {setting:<34} {r['median_s']:>9.3f} {r['min_s']:>8.3f} "
                 f"{r['images_per_s']:>7.2f} {100 * r['mfu']:>5.1f}% {r['compile_s']:>9.1f} "
                 f"{_memory_columns(mem)}")
  for r in results:
    if r["kind"] == "agc":
      lines.append(f"AGC share of the {r['model']} step: {100 * r['agc_share_median']:.1f}% (median), "
                   f"{100 * r['agc_share_min']:.1f}% (min)")
  return "\n".join(lines)


SUITES = ("train", "compile", "eval", "agc", "input", "checkpoint")


def run_suite(what: Sequence[str], model_names: Sequence[str], *, batch_size: int = 8, image_size: int = 128,
              dtype: str = "float32", num_devices: int = 1, grad_accum: int = 1, clipping: Optional[float] = 0.01,
              remat: Sequence[bool] = (False,), sam_rho: Sequence[float] = (0.0,), warmup: int = 2,
              steps: int = 10, matmul_size: int = 2048,
              dataset: str = "imagenet2012", data_dir: Optional[str] = None, augment: str = "none",
              cpu_bf16: bool = False, log: Callable[[str], None] = print) -> dict:
  """Runs the chosen measurements for every model (and remat setting); returns a JSON-ready dict.

  ``remat=True`` passes ``remat=True`` to the model constructor (blocks rematerialised with jax.checkpoint);
  ``False`` leaves the model's default. Each ``sam_rho`` > 0 adds train steps with SAM (side by side
  with ``sam_rho=0`` when both are given). ``input`` measures ``nfnet_jax.data.train_iterator`` on ``dataset``.
  """
  unknown = sorted(set(what) - set(SUITES))
  if unknown:
    raise ValueError(f"unknown benchmark(s) {unknown}; choose from {list(SUITES)}.")
  if steps < 10:
    raise ValueError(f"time at least 10 steps (got steps={steps}) so the median means something.")
  configs = [StepConfig(model=m, batch_size=batch_size, image_size=image_size, dtype=dtype, num_devices=num_devices,
                        grad_accum=grad_accum, clipping=clipping, model_kwargs={"remat": True} if r else {},
                        sam_rho=float(rho), cpu_bf16=cpu_bf16)
             for m in model_names for r in remat for rho in sam_rho]
  for cfg in configs:
    cfg.validate()  # every argument error before the first compile
  if host_memory.describe():
    log(host_memory.describe())
  matmul = matmul_flops_per_s(matmul_size, warmup=warmup, steps=steps)
  log(f"matmul {matmul_size}^2 float32: {matmul['median_flops_per_s'] / 1e9:.1f} GFLOP/s")
  results = []
  for cfg in configs:
    for kind in what:
      if kind == "input":
        continue
      log(f"{kind}: {cfg.model} {cfg.model_kwargs or ''} ...")
      if kind == "checkpoint":
        import tempfile  # pylint: disable=import-outside-toplevel
        with tempfile.TemporaryDirectory() as workdir:
          results.append(checkpoint_stall(cfg, workdir))
        continue
      fn = {"train": train_step, "compile": compile_train_step, "eval": eval_step, "agc": agc_share}[kind]
      results.append(fn(cfg, matmul, warmup=warmup, steps=steps))
  if "input" in what:
    log(f"input: {dataset} ...")
    results.append(input_pipeline(dataset, data_dir=data_dir, batch_size=batch_size, image_size=image_size,
                                  augment=augment, num_devices=num_devices, grad_accum=grad_accum, warmup=warmup,
                                  steps=steps))
  device = jax.devices()[0]
  return {"device": {"platform": device.platform, "kind": device.device_kind, "count": jax.local_device_count()},
          "jax_version": jax.__version__, "host_memory": host_memory.describe(), "matmul": matmul,
          "results": results}


def prepare_mini_imagenet(root: str) -> str:
  """Builds (once) a realistic miniature ImageNet under ``root`` for input benchmarks; returns its tfds data_dir."""
  from nfnet_jax.data import mini_imagenet  # local: tf/tfds are heavy and only needed here
  data_dir = os.path.join(root, "data")
  if not os.path.isdir(data_dir):
    data_dir, _, _ = mini_imagenet.build_prepared(root, realistic=True)
  return data_dir
