"""The networks a model checkpoint can hold, by name: how to build one from its model config, the inputs that
initialise it and, if it is trained adversarially, its discriminator. Tasks (`train/tasks.py`) name the network they
train; checkpoints record that name.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from metaportrait_jax.models.discriminator import Discriminator
from metaportrait_jax.models.generator import Generator, dummy_batch
from metaportrait_jax.models.temporal_sr import TemporalSR, dummy_clip


@dataclasses.dataclass(frozen=True)
class Network:
    module: Callable[[ml_collections.ConfigDict], nn.Module]           # model config -> the Flax module
    example_inputs: Callable[[ml_collections.ConfigDict], tuple]       # model config -> `module.init` arguments
    discriminator: Callable[[ml_collections.ConfigDict], nn.Module] | None = None  # judges `[B, S, S, 3]` images


def _discriminator_inputs(model_config: ml_collections.ConfigDict) -> tuple[jax.Array]:
    return (jnp.zeros((1, model_config.image_size, model_config.image_size, 3), jnp.float32),)


NETWORKS = {
    "generator": Network(Generator, lambda model: (dummy_batch(model),), Discriminator),
    "temporal_sr": Network(TemporalSR, lambda model: (dummy_clip(model),)),
}


def get_network(name: str) -> Network:
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; expected one of {sorted(NETWORKS)}")
    return NETWORKS[name]


def abstract_variables(name: str, model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Shapes and dtypes (`jax.ShapeDtypeStruct`) of network `name`'s variables, without computing them."""
    network = get_network(name)
    module = network.module(model_config)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *network.example_inputs(model_config)))


def abstract_discriminator_variables(name: str, model_config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """Shapes and dtypes of network `name`'s discriminator variables; None if it has none."""
    network = get_network(name)
    if network.discriminator is None:
        return None
    module = network.discriminator(model_config)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *_discriminator_inputs(model_config)))
