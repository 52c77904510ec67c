"""Speed side by side with timm (PyTorch): the same training step and eval forward, taking turns.

timm's step mirrors ours: forward in training mode, label-smoothed cross-entropy, backward, timm's
``adaptive_clip_grad`` over every parameter but the classifier's (as our AGC), Nesterov SGD and
timm's ``ModelEmaV3`` update of the weights' EMA (as our trainer's); bf16 runs under
``torch.autocast(bfloat16)``. torch runs in a process of its own (`TorchProcess`), as users run
it, and each timm variant (memory format, ``torch.compile``) takes turns with ours step by step
(`benchmark.time_alternating`), so drifts of the machine's speed hit all alike; the ratio is timm's
best median over ours. torch and timm are imported only in that process and only when asked for:
they are no dependency of nfnet-jax."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nfnet_jax import benchmark
from nfnet_jax import host_memory
from nfnet_jax import layers

# Our model name -> timm's model of the same architecture.
TIMM_MODELS = {**{f"nfnet_f{i}": f"dm_nfnet_f{i}" for i in range(7)},
               **{f"nf_resnet{d}": f"nf_resnet{d}" for d in (50, 101)}}
KINDS = ("train", "eval", "ops")
# "ops": NFNet-F0's three kinds of convolution at 128 px (batch --batch_size), each pass on its own.
# name -> (channels in, channels out, kernel side, groups, spatial side)
CONV_OPS = {
    "3x3 128->128 @32": (128, 128, 3, 1, 32),      # stage 1: one group of 128
    "3x3 768->768 g6 @8": (768, 768, 3, 6, 8),     # stage 3: six groups of 128
    "1x1 1536->768 @8": (1536, 768, 1, 1, 8),      # stage 3: the bottleneck's first 1x1
}
PASSES = ("forward", "weight_grad", "input_grad")
# channels_first/last memory format, optionally under torch.compile.
VARIANTS = ("nchw", "nhwc", "nchw_compile", "nhwc_compile")


class CompareError(ValueError):
  """A --compare request that cannot run, with what to do about it."""


def check(compare: str, what: Sequence[str], model_names: Sequence[str], variants: Sequence[str]) -> None:
  """One-line errors for a compare request, before anything is built or compiled."""
  if compare != "timm":
    raise CompareError(f"--compare takes 'timm', got {compare!r}.")
  bad = sorted(set(what) - set(KINDS))
  if bad:
    raise CompareError(f"--compare=timm measures {list(KINDS)} only, got --what={list(what)}.")
  missing = [m for m in model_names if m not in TIMM_MODELS]
  if missing:
    raise CompareError(f"no timm equivalent of {missing}; --compare=timm takes {sorted(TIMM_MODELS)}.")
  if not variants or set(variants) - set(VARIANTS):
    raise CompareError(f"--timm_variants takes some of {list(VARIANTS)}, got {list(variants)}.")


def import_torch() -> tuple[Any, Any]:
  """(torch, timm), or a CompareError saying how to install them."""
  try:
    import timm  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise CompareError(f"--compare=timm needs torch and timm in this Python ({e}); install them with "
                       "`pip install torch timm` (they are not dependencies of nfnet-jax).") from None
  return torch, timm


def match_threads(torch) -> int:
  """Gives torch as many intra-op threads as XLA:CPU uses (every core this process may run on)."""
  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  return threads


def torch_device() -> str:
  """Where torch runs: on the GPU when jax does, else on the CPU."""
  return "cuda" if jax.default_backend() == "gpu" else "cpu"


def timm_runner(kind: str, cfg: benchmark.StepConfig, variant: str, device: str) -> Callable[[], None]:
  """timm's train step or eval forward for ``cfg`` as a function that returns once the work is done."""
  torch, timm = import_torch()
  from timm.utils import ModelEmaV3, adaptive_clip_grad  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  model = timm.create_model(TIMM_MODELS[cfg.model], num_classes=cfg.num_classes).to(device)
  layout = torch.channels_last if variant.startswith("nhwc") else torch.contiguous_format
  model = model.to(memory_format=layout)
  images = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device)
  images = images.contiguous(memory_format=layout)
  labels = torch.randint(0, cfg.num_classes, (cfg.batch_size,), device=device)
  forward = torch.compile(model) if variant.endswith("_compile") else model
  autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  if kind == "eval":
    model.eval()

    def run():
      with torch.inference_mode(), autocast():
        forward(images)
      sync()

    return run

  model.train()
  head = {id(p) for p in model.get_classifier().parameters()}
  clipped = [p for p in model.parameters() if id(p) not in head]
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=2e-5)
  ema = ModelEmaV3(model, decay=benchmark.EMA_DECAY)  # ours keeps an EMA too

  def run():
    with autocast():
      logits = forward(images)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=0.1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clipping:
      adaptive_clip_grad(clipped, clip_factor=cfg.clipping, eps=1e-3)
    optimizer.step()
    ema.update(model)
    sync()

  return run


def side_by_side(ours: Callable[[], Any], theirs: dict[str, Callable[[], Any]], *, warmup: int = 2,
                 steps: int = 10) -> dict:
  """Times ours and every one of theirs taking turns; ratios of their best median (and min) over ours."""
  if not theirs:
    raise ValueError("side_by_side needs at least one function of theirs.")
  timings = benchmark.time_alternating([ours, *theirs.values()], warmup=warmup, steps=steps)
  their_timings = dict(zip(theirs, timings[1:]))
  best = min(their_timings, key=lambda name: their_timings[name]["median_s"])
  return {"ours": timings[0], "theirs": their_timings, "best": best,
          "speedup_median": their_timings[best]["median_s"] / timings[0]["median_s"],
          "speedup_min": min(t["min_s"] for t in their_timings.values()) / timings[0]["min_s"]}


def compare(kind: str, cfg: benchmark.StepConfig, matmul: dict, torch: TorchProcess, *,
            variants: Sequence[str], warmup: int = 2, steps: int = 10) -> dict:
  """Our train step or eval step for ``cfg`` against timm's ``variants`` (in ``torch``), taking turns."""
  runner = {"train": benchmark._train_runner, "eval": benchmark._eval_runner}[kind]  # pylint: disable=protected-access
  ours, record = runner(cfg)
  theirs = {v: torch.runner(kind, cfg=dataclasses.asdict(cfg), variant=v) for v in variants}
  result = side_by_side(ours, theirs, warmup=warmup, steps=steps)
  for fn in theirs.values():
    fn.close()
  return {"kind": f"compare_{kind}", "ours": record(result["ours"], matmul),
          "theirs": {v: {**t, "images_per_s": cfg.batch_size / t["median_s"]} for v, t in result["theirs"].items()},
          "timm_model": TIMM_MODELS[cfg.model], "torch_version": torch.torch_version,
          **{k: result[k] for k in ("best", "speedup_median", "speedup_min")}}


def conv_op_flops(op: str, batch_size: int) -> float:
  """Multiply-adds x 2 of one pass of ``op`` (forward, weight and input gradient cost the same)."""
  cin, cout, k, groups, side = CONV_OPS[op]
  return 2.0 * batch_size * side * side * k * k * (cin // groups) * cout


def conv_inputs(op: str, batch_size: int, dtype: str) -> tuple[jax.Array, jax.Array]:
  """The NHWC input and fan-in-scaled HWIO kernel that `jax_conv_passes` times for ``op``."""
  cin, cout, k, groups, side = CONV_OPS[op]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch_size, side, side, cin)), dtype)
  w = jnp.asarray(rng.normal(size=(k, k, cin // groups, cout)) / np.sqrt(k * k * cin / groups), dtype)
  return x, w


def jax_conv_passes(op: str, batch_size: int, dtype: str) -> dict[str, Callable[[], Any]]:
  """Our conv (`layers.conv2d`, as the models run it) for ``op``: each pass jitted on its own."""
  _, cout, _, groups, side = CONV_OPS[op]
  x, w = conv_inputs(op, batch_size, dtype)
  conv = lambda x, w: layers.conv2d(x, w, groups=groups)
  g = jnp.ones((batch_size, side, side, cout), dtype)
  fwd = jax.jit(conv)
  wgrad = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
  dgrad = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
  return {"forward": lambda: fwd(x, w), "weight_grad": lambda: wgrad(x, w, g),
          "input_grad": lambda: dgrad(x, w, g)}


def torch_conv_passes(op: str, batch_size: int, dtype: str, layout: str,
                      device: str) -> dict[str, Callable[[], None]]:
  """torch's conv2d for ``op`` and its two gradients (torch.nn.grad), in ``layout`` (nchw/nhwc)."""
  torch, _ = import_torch()
  cin, cout, k, groups, side = CONV_OPS[op]
  fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
  dt = getattr(torch, dtype)
  gen = torch.Generator().manual_seed(0)
  x = torch.randn(batch_size, cin, side, side, generator=gen).to(device, dt).contiguous(memory_format=fmt)
  w = (torch.randn(cout, cin // groups, k, k, generator=gen) / (k * k * cin / groups) ** 0.5)
  w = w.to(device, dt).contiguous(memory_format=fmt)
  g = torch.ones(batch_size, cout, side, side, device=device, dtype=dt).contiguous(memory_format=fmt)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  pad = k // 2

  def timed(fn):
    def run():
      with torch.no_grad():
        fn()
      sync()
    return run

  conv = torch.nn.functional.conv2d
  return {"forward": timed(lambda: conv(x, w, padding=pad, groups=groups)),
          "weight_grad": timed(lambda: torch.nn.grad.conv2d_weight(x, w.shape, g, padding=pad, groups=groups)),
          "input_grad": timed(lambda: torch.nn.grad.conv2d_input(x.shape, w, g, padding=pad, groups=groups))}


def compare_conv_ops(batch_size: int, dtype: str, torch: TorchProcess, *, warmup: int = 2,
                     steps: int = 10) -> list[dict]:
  """Every pass of every `CONV_OPS` entry, ours against torch's best layout (in ``torch``), taking turns."""
  results = []
  for op in CONV_OPS:
    ours = jax_conv_passes(op, batch_size, dtype)
    work = conv_op_flops(op, batch_size)
    for name in PASSES:
      theirs = {layout: torch.runner("conv", op=op, batch_size=batch_size, dtype=dtype, layout=layout, pass_name=name)
                for layout in ("nchw", "nhwc")}
      r = side_by_side(ours[name], theirs, warmup=warmup, steps=steps)
      for fn in theirs.values():
        fn.close()
      results.append({"kind": "compare_ops", "op": op, "pass": name, "dtype": dtype, "batch_size": batch_size,
                      "flops": work, "ours_median_s": r["ours"]["median_s"],
                      "ours_flops_per_s": work / r["ours"]["median_s"], "best": r["best"],
                      "theirs_median_s": r["theirs"][r["best"]]["median_s"],
                      "theirs_flops_per_s": work / r["theirs"][r["best"]]["median_s"],
                      "speedup_median": r["speedup_median"]})
  return results


def format_ops_table(results: Sequence[dict]) -> str:
  """GFLOP/s of each conv pass, ours and torch's, and the ratio."""
  lines = [f"{'op':<20} {'pass':<12} {'dtype':<9} {'ours GFLOP/s':>12} {'torch GFLOP/s':>13} {'layout':<6} "
           f"{'ours vs torch':>13}"]
  for r in results:
    lines.append(f"{r['op']:<20} {r['pass']:<12} {r['dtype']:<9} {r['ours_flops_per_s'] / 1e9:>12.0f} "
                 f"{r['theirs_flops_per_s'] / 1e9:>13.0f} {r['best']:<6} {r['speedup_median']:>12.2f}x")
  return "\n".join(lines)


def torch_matmul(size: int, dtype: str, device: str) -> Callable[[], None]:
  """A ``size``² torch product (bf16 through its own kernels, e.g. oneDNN's AMX on CPU)."""
  torch, _ = import_torch()
  a = torch.ones(size, size, dtype=getattr(torch, dtype), device=device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def run():
    torch.matmul(a, a)
    sync()

  return run


def _torch_work(what: str, args: dict, device: str) -> Callable[[], None]:
  """The torch function `TorchProcess.runner` asks for, built in the torch process."""
  if what in ("train", "eval"):
    return timm_runner(what, benchmark.StepConfig(**args["cfg"]), args["variant"], device)
  if what == "conv":
    return torch_conv_passes(args["op"], args["batch_size"], args["dtype"], args["layout"], device)[args["pass_name"]]
  if what == "matmul":
    return torch_matmul(args["size"], args["dtype"], device)
  raise ValueError(f"unknown torch work {what!r}")


def serve() -> None:
  """The torch process's loop: one JSON request per line on stdin, one JSON reply per line."""
  replies = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)  # whatever torch or timm print goes to the log, not into the replies
  works, device = {}, "cpu"
  for line in sys.stdin:
    request = json.loads(line)
    try:
      if request["op"] == "hello":
        torch, timm = import_torch()
        device = request["device"]
        if device == "cuda" and not torch.cuda.is_available():
          raise CompareError("jax runs on the GPU but this torch has no CUDA; install a CUDA build of torch.")
        reply = {"torch": torch.__version__, "timm": timm.__version__, "threads": match_threads(torch)}
      elif request["op"] == "build":
        works[request["id"]] = _torch_work(request["what"], request["args"], device)
        reply = {}
      elif request["op"] == "run":
        start = time.perf_counter()
        works[request["id"]]()
        reply = {"s": time.perf_counter() - start}
      else:  # "drop"
        works.pop(request["id"], None)
        reply = {}
    except Exception as e:  # pylint: disable=broad-except
      reply = {"error": str(e) if isinstance(e, CompareError) else f"{type(e).__name__}: {e}"}
    replies.write(json.dumps(reply) + "\n")


class TorchProcess:
  """torch and timm in a child process of their own, as users run them.

  In one process with jax, libgomp gives oneDNN's calls from XLA's threads and torch's from Python
  OpenMP teams of their own, more threads than cores, and then all but stops spin-waiting: timm's
  F0 step took 1.44 s there and 1.12 s alone. The child idles while ours runs, and ours while it runs.
  """

  def __init__(self, device: str):
    self._log = tempfile.TemporaryFile(mode="w+")
    self._proc = subprocess.Popen([sys.executable, "-c", "from nfnet_jax import compare; compare.serve()"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
    self._ids = 0
    try:
      hello = self._ask({"op": "hello", "device": device})
    except CompareError:
      self.close()
      raise
    self.torch_version, self.timm_version, self.threads = hello["torch"], hello["timm"], hello["threads"]

  def _ask(self, request: dict) -> dict:
    try:
      self._proc.stdin.write(json.dumps(request) + "\n")
      self._proc.stdin.flush()
      line = self._proc.stdout.readline()
    except (BrokenPipeError, OSError):
      line = ""
    if not line:
      self._log.seek(0)
      tail = " | ".join(self._log.read().strip().splitlines()[-3:])
      raise CompareError(f"the torch process stopped ({tail or 'no output'}).")
    reply = json.loads(line)
    if "error" in reply:
      raise CompareError(f"torch process: {reply['error']}")
    return reply

  def runner(self, what: str, **args) -> benchmark.Remote:
    """Builds torch work there (see `_torch_work`); the returned call runs it once and reports its seconds."""
    self._ids += 1
    work_id = self._ids
    self._ask({"op": "build", "id": work_id, "what": what, "args": args})
    return benchmark.Remote(lambda: self._ask({"op": "run", "id": work_id})["s"],
                            close=lambda: self._ask({"op": "drop", "id": work_id}))

  def close(self) -> None:
    if self._proc.poll() is None:
      self._proc.stdin.close()
      try:
        self._proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self._proc.kill()
    self._log.close()

  def __enter__(self) -> "TorchProcess":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def format_table(results: Sequence[dict], rates: dict) -> str:
  """Ratios beside the absolute figures, and the machine's matmul rates."""
  lines = [f"matmul {rates['size']}^2 GFLOP/s: " + ", ".join(
      f"{k} {v / 1e9:.0f}" for k, v in rates.items() if k != "size"),
           f"{'kind':<6} {'model':<14} {'setting':<44} {'ours s':>8} {'timm s':>8} {'timm best':<13} "
           f"{'ours vs timm':>12}"]
  for r in results:
    o = r["ours"]
    dtype = o["dtype"] + ("" if o["compute_dtype"] == o["dtype"] else f"->{o['compute_dtype']}")
    setting = f"b{o['batch_size']} {o['image_size']}px {dtype}" + (" fused" if o.get("update") == "fused" else "")
    lines.append(f"{o['kind']:<6} {o['model']:<14} {setting:<44} {o['median_s']:>8.3f} "
                 f"{r['theirs'][r['best']]['median_s']:>8.3f} {r['best']:<13} {r['speedup_median']:>11.2f}x")
  return "\n".join(lines)


def run_compare(what: Sequence[str], model_names: Sequence[str], *, dtypes: Sequence[str], batch_size: int,
                image_size: int, variants: Sequence[str], clipping: Optional[float] = 0.01, warmup: int = 2,
                steps: int = 10, matmul_size: int = 2048, cpu_bf16: bool = False,
                log: Callable[[str], None] = print) -> dict:
  """Every (model, dtype, kind) against timm; returns a JSON-ready dict with the matmul rates of both."""
  check("timm", what, model_names, variants)
  if steps < 10:
    raise CompareError(f"time at least 10 steps (got steps={steps}) so the median means something.")
  configs = [benchmark.StepConfig(model=m, batch_size=batch_size, image_size=image_size, dtype=d,
                                  clipping=clipping, cpu_bf16=cpu_bf16) for m in model_names for d in dtypes]
  for cfg in configs:
    cfg.validate()
  with TorchProcess(torch_device()) as torch:
    log(f"torch {torch.torch_version}, timm {torch.timm_version}, {torch.threads} torch threads (a process of "
        f"its own){'; ' + host_memory.describe() if host_memory.describe() else ''}")
    matmul = benchmark.matmul_flops_per_s(matmul_size, warmup=warmup, steps=steps)
    rates = {"size": matmul_size, "jax_float32": matmul["median_flops_per_s"],
             "jax_bfloat16": benchmark.matmul_flops_per_s(matmul_size, "bfloat16", warmup=warmup,
                                                          steps=steps)["median_flops_per_s"]}
    for d in ("float32", "bfloat16"):
      fn = torch.runner("matmul", size=matmul_size, dtype=d)
      rates[f"torch_{d}"] = 2.0 * matmul_size**3 / benchmark.time_calls(fn, warmup=warmup, steps=steps)["median_s"]
      fn.close()
    log(format_table([], rates).splitlines()[0])
    results, ops = [], []
    for cfg in configs:
      for kind in what:
        if kind == "ops":
          continue
        log(f"{kind}: {cfg.model} {cfg.dtype} against timm {TIMM_MODELS[cfg.model]} {list(variants)} ...")
        results.append(compare(kind, cfg, matmul, torch, variants=variants, warmup=warmup, steps=steps))
        log(format_table(results[-1:], rates).splitlines()[-1])
    if "ops" in what:
      for dtype in dtypes:
        log(f"ops: NFNet-F0's convolutions at batch {batch_size}, {dtype}, against torch ...")
        ops += compare_conv_ops(batch_size, dtype, torch, warmup=warmup, steps=steps)
  device = jax.devices()[0]
  return {"device": {"platform": device.platform, "kind": device.device_kind}, "jax_version": jax.__version__,
          "torch_version": torch.torch_version, "timm_version": torch.timm_version, "torch_threads": torch.threads,
          "torch_device": torch_device(), "host_memory": host_memory.describe(),
          "matmul": rates, "results": results, "ops": ops}
