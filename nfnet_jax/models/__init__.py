"""Model zoo: NFNets, NF-ResNets, NF-RegNets and the BatchNorm ResNet baseline.

    model = nfnet_jax.models.create('nfnet_f0', num_classes=1000)
    params, state = model.init(rng, images, is_training=True)
    outputs, state = model.apply(params, state, rng, images, is_training=True)
"""

from nfnet_jax.models.base import ModelSpec
from nfnet_jax.models.registry import available, create, get_spec

__all__ = ["ModelSpec", "available", "create", "get_spec"]
