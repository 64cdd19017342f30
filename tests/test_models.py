"""Architecture checks of the Flax models: official parameter counts, manifest layout, stages and switches."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from metaportrait_jax.convert import official_base
from metaportrait_jax.models.config import generator_config
from metaportrait_jax.models.discriminator import Discriminator
from metaportrait_jax.models.generator import Generator, dummy_batch
from tiny_models import random_variables



def count(tree):
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def abstract_init(config):
    return jax.eval_shape(lambda: Generator(config).init(jax.random.key(0), dummy_batch(config)))


def read_manifest(name):
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference", name)
    if not os.path.exists(path):
        pytest.skip(f"{name} not available beside the project")
    state = {}
    with open(path) as f:
        for line in f:
            if not line.startswith("#"):
                key, shape, _ = line.rstrip("\n").split("\t")
                state[key] = np.zeros([int(s) for s in shape.split("x")], np.float32)
    return state


def test_official_parameter_counts():
    config = generator_config("official_256")
    variables = abstract_init(config)
    assert count(variables["params"]) == 130_212_376
    assert count(variables["spectral"]) == 66_001
    per_subnetwork = {k: count(v) for k, v in variables["params"].items()}
    assert per_subnetwork == {"ladder_network": 10_466_880, "dense_motion_network": 74_812_803,
                              "feature_encoder": 3_398_976, "fuse_high_res": 38_656, "SPDAE_G": 41_495_061}
    disc = jax.eval_shape(lambda: Discriminator(config).init(jax.random.key(0), jnp.zeros((1, 256, 256, 3))))
    assert count(disc["params"]) == 2_758_849


def test_official_manifest_maps_onto_the_flax_tree():
    config = ml_collections.ConfigDict({"model": generator_config("official_256")})
    state = read_manifest("official_generator_state_dict.tsv")
    converted = official_base.official_to_flax_generator(state, config)
    expected = abstract_init(config.model)
    assert jax.tree_util.tree_structure(converted) == jax.tree_util.tree_structure(expected)
    assert jax.tree.map(np.shape, converted) == jax.tree.map(lambda x: x.shape, expected)
    disc_state = read_manifest("official_discriminator_state_dict.tsv")
    official_base.official_to_flax_discriminator(disc_state, config)


@pytest.fixture(scope="module")
def tiny():
    config = generator_config("tiny")
    batch = dummy_batch(config, 2)
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.uniform(size=v.shape), jnp.float32) for k, v in batch.items()}
    return config, batch, random_variables(config)  # Generator.init's tree without its minute of compiling


def test_tiny_forward_shapes_and_warp_stage(tiny):
    config, batch, variables = tiny
    apply = jax.jit(Generator(config).apply, static_argnames="stage")  # compiled whole: op by op takes longer
    out = apply(variables, batch)
    assert out["prediction"].shape == (2, 64, 64, 3) and out["deformed"].shape == (2, 64, 64, 3)
    assert out["flow"].shape == (2, 16, 16, 2) and out["deformation"].shape == (2, 16, 16, 2)
    assert out["occlusion_map"].shape == (2, 64, 64, 1)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())
    warp = apply(variables, batch, stage="warp")
    assert set(warp) == set(out) - {"prediction"}
    for k in warp:
        np.testing.assert_allclose(warp[k], out[k], atol=1e-6)
    with pytest.raises(ValueError, match="stage"):
        Generator(config).apply(variables, batch, stage="refine")


def test_spectral_norm_train_iterates_eval_does_not(tiny):
    config, batch, variables = tiny
    _, updated = jax.jit(lambda v, b: Generator(config).apply(v, b, train=True, mutable=["spectral"]))(variables, batch)
    before = jax.tree_util.tree_leaves(variables["spectral"])
    after = jax.tree_util.tree_leaves(updated["spectral"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    apply = jax.jit(Generator(config).apply)
    out1, out2 = apply(variables, batch), apply(variables, batch)
    np.testing.assert_array_equal(out1["prediction"], out2["prediction"])


def test_without_spectral_norm_same_parameters(tiny):
    config, batch, variables = tiny
    plain = generator_config("tiny")
    plain.use_sn = False
    v = jax.eval_shape(Generator(plain).init, jax.random.key(0), batch)
    assert "spectral" not in v
    assert count(v["params"]) == count(variables["params"])


def test_output_activation_and_aligned_switches(tiny):
    config, batch, variables = tiny
    switched = generator_config("tiny")
    switched.output_activation = "sigmoid"
    switched.grid_convention = "aligned"
    switched.line_resize_chain = False
    out = jax.jit(Generator(switched).apply)(variables, batch)
    assert float(out["prediction"].min()) >= 0
    default = jax.jit(Generator(config).apply)(variables, batch)
    assert not np.allclose(out["deformed"], default["deformed"])
    switched.output_activation = "relu"
    with pytest.raises(ValueError, match="output_activation"):
        jax.eval_shape(Generator(switched).apply, variables, batch)  # refused while tracing: nothing runs
