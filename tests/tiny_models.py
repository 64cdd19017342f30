"""Tiny random-weight model checkpoints (save_model format) for command tests.

Weights are drawn with numpy into the shapes `Generator.init` would give (traced, not compiled): compiling the tiny
generator's init costs about 40 CPU-seconds and running it op by op about as much, more than all of a command test.
"""

import jax
import ml_collections
import numpy as np

from metaportrait_jax.models.config import generator_config
from metaportrait_jax.models.generator import Generator, dummy_batch
from metaportrait_jax.train.checkpoint import save_model


def random_variables(model_config: ml_collections.ConfigDict, seed: int = 0) -> dict:
    """Generator variables: He-normal kernels, unit scales, zero biases; with `use_sn`, random unit vectors as the
    spectral norm's power-iteration state."""
    shapes = jax.eval_shape(Generator(model_config).init, jax.random.key(0), dummy_batch(model_config))
    rng = np.random.default_rng(seed)

    def draw(path, leaf) -> np.ndarray:
        name = path[-1].key
        if path[0].key == "spectral":
            vector = rng.normal(size=leaf.shape)
            return (vector / np.linalg.norm(vector)).astype(leaf.dtype)
        if name == "kernel":
            return (rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(leaf.dtype)
        return (np.ones if name == "scale" else np.zeros)(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def save_tiny_checkpoint(path: str, topology: str, id_dim: int, batch_size: int = 4, seed: int = 0) -> str:
    """The `tiny` generator (64², no spectral norm) for `topology` landmarks and `id_dim` identities, at `path`."""
    config = ml_collections.ConfigDict()
    config.model = generator_config("tiny")
    config.model.topology, config.model.id_dim, config.model.use_sn = topology, id_dim, False
    config.inference = ml_collections.ConfigDict(dict(batch_size=batch_size, fps=10.0))
    save_model(path, config, random_variables(config.model, seed), network="generator")
    return path
