"""Writes tests/data/timm/: small timm NFNets' weights and logits, and timm's full-size key layouts.

Run once in a separate environment with PyTorch and timm (never a dependency of nfnet-jax):

  pip install torch==2.14.1 torchvision==0.29.1 timm safetensors
  python scripts/make_timm_fixtures.py [--out=tests/data/timm]

For each architecture (DeepMind's NFNet as timm's dm_nfnet, NFNet-L with SE, ECA-NFNet-L) it builds a
reduced-width config, randomises every tensor (gains and SkipInit gains included, so no branch is
zero), and saves `<arch>.safetensors` (its state dict) and `<arch>_logits.npy` (timm's eval-mode
logits on the input `fixture_input()`, float32). `tensors.pth` is a torch.save file of a few views. `layouts.json.gz` holds timm's key → shape list of
every full-size supported model (built on the meta device: no weights are made or downloaded), and
`meta.json` the configs, timm's version and parameter counts.
"""

import argparse
import dataclasses
import gzip
import json
import os

import numpy as np
import safetensors.torch
import timm
import torch
from timm.models import nfnet

# name in our registry, timm config to start from, overrides of timm's NfCfg, our models.create overrides.
ARCHS = {
    "dm_nfnet": ("nfnet_f0", "dm_nfnet_f0",
                 dict(depths=(1, 2, 1, 1), channels=(16, 32, 48, 48), stem_chs=8, group_size=8,
                      num_features=96),
                 dict(widths=(16, 32, 48, 48), group_size=8, stem_width=8, depths=(1, 2, 1, 1))),
    "nfnet_l": ("nfnet_l0", "nfnet_l0",
                dict(depths=(1, 2, 1, 1), channels=(16, 32, 48, 48), stem_chs=8, group_size=8,
                     num_features=72),
                dict(channels=(16, 32, 48, 48), stem_ch=8, group_size=8, depths=(1, 2, 1, 1))),
    # 128 channels in the last stage, for an ECA kernel of 5 (3 below 128).
    "eca_nfnet_l": ("eca_nfnet_l0", "eca_nfnet_l0",
                    dict(depths=(1, 2, 1, 1), channels=(16, 32, 48, 128), stem_chs=8,
                         group_size=8, num_features=64),
                    dict(channels=(16, 32, 48, 128), stem_ch=8, group_size=8, depths=(1, 2, 1, 1),
                         final_conv_mult=0.5)),
}
NUM_CLASSES = 10
FULL_SIZE = [f"dm_nfnet_f{i}" for i in range(7)] + [
    "nfnet_l0", "eca_nfnet_l0", "eca_nfnet_l1", "eca_nfnet_l2", "eca_nfnet_l3"]


# (The stem is narrower than the first stage, as in the full-size models, so that stage starts with
# a projection shortcut.)


def fixture_input() -> np.ndarray:
  """The fixed NHWC float32 input batch the logits are for (tests rebuild it the same way)."""
  return np.random.default_rng(0).standard_normal((2, 72, 72, 3), dtype=np.float32)


def randomise(model: torch.nn.Module, seed: int) -> None:
  """Every tensor random: weights as initialised, gains in [0.5, 1.5], biases N(0, 0.1²)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("gain"):
        p.copy_(0.5 + torch.rand(p.shape, generator=g))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
      elif name.endswith("attn_last.conv.weight") or name == "head.fc.weight":
        p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def full_size(args):
  """Randomised full-size models and timm's logits on fixture_input() resized to --image_size."""
  x = torch.from_numpy(fixture_input()).permute(0, 3, 1, 2)
  x = torch.nn.functional.interpolate(x, size=args.image_size, mode="bilinear").contiguous()
  np.save(os.path.join(args.full_size, "input.npy"), x.permute(0, 2, 3, 1).numpy())
  for i, name in enumerate(args.models.split(",")):
    model = timm.create_model(name).eval()
    randomise(model, 100 + i)
    if args.check:
      model.load_state_dict(safetensors.torch.load_file(args.check), strict=True)
    with torch.no_grad():
      logits = model(x).numpy()
    if args.check:
      ref = np.load(args.check_logits)
      print(f"{name}: loaded {args.check} with strict=True; logits max |diff| / max |logit| = "
            f"{np.abs(logits - ref).max() / np.abs(ref).max():.2e}")
      continue
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                os.path.join(args.full_size, f"{name}.safetensors"))
    np.save(os.path.join(args.full_size, f"{name}_logits.npy"), logits)
    print(f"{name}: logits max |logit| {np.abs(logits).max():.3f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="tests/data/timm")
  parser.add_argument("--full_size", default=None, help="Instead: write randomised full-size models "
                      "(<timm name>.safetensors, <timm name>_logits.npy) to this folder, for --models.")
  parser.add_argument("--models", default=",".join(FULL_SIZE))
  parser.add_argument("--image_size", type=int, default=128)
  parser.add_argument("--check", default=None, help="Instead: load FILE (e.g. written by to_timm) into "
                      "timm's --models model with strict=True and compare its logits to --check_logits.")
  parser.add_argument("--check_logits", default=None, help="Logits (.npy) expected for --check's weights.")
  args = parser.parse_args()
  if args.full_size or args.check:
    return full_size(args)
  os.makedirs(args.out, exist_ok=True)
  torch.manual_seed(0)
  meta = {"timm_version": timm.__version__, "torch_version": torch.__version__,
          "num_classes": NUM_CLASSES, "input": "np.random.default_rng(0).standard_normal((2, 72, 72, 3), float32)",
          "archs": {}, "param_counts": {}}
  x = torch.from_numpy(fixture_input()).permute(0, 3, 1, 2).contiguous()
  for seed, (arch, (ours, base, cfg_overrides, our_overrides)) in enumerate(ARCHS.items()):
    cfg = dataclasses.replace(nfnet.model_cfgs[base], **cfg_overrides)
    model = nfnet.NormFreeNet(cfg, num_classes=NUM_CLASSES).eval()
    randomise(model, seed)
    with torch.no_grad():
      logits = model(x).numpy()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, os.path.join(args.out, f"{arch}.safetensors"))
    np.save(os.path.join(args.out, f"{arch}_logits.npy"), logits.astype(np.float32))
    meta["archs"][arch] = {"model": ours, "timm_config": base, "timm_overrides": cfg_overrides,
                           "overrides": our_overrides,
                           "num_params": sum(v.numel() for v in model.parameters())}
    print(f"{arch}: {meta['archs'][arch]['num_params']} params, logits {logits.shape}")
  base = torch.arange(12, dtype=torch.float32).view(3, 4)
  torch.save({"contiguous": base, "transposed": base.t(), "offset": base[1:, 2:],
              "half": base[0].half(), "param": torch.nn.Parameter(torch.ones(2))},
             os.path.join(args.out, "tensors.pth"))
  layouts = {}
  for name in FULL_SIZE:
    with torch.device("meta"):
      model = timm.create_model(name)
    layouts[name] = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    meta["param_counts"][name] = sum(p.numel() for p in model.parameters())
  with gzip.GzipFile(os.path.join(args.out, "layouts.json.gz"), "wb", mtime=0) as f:
    f.write(json.dumps(layouts, separators=(",", ":")).encode())
  with open(os.path.join(args.out, "meta.json"), "w") as f:
    json.dump(meta, f, indent=1)
    f.write("\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
