"""Model checkpoints: `<dir>/model/` (Orbax: generator and optional discriminator variables) + `<dir>/config.json`.

`config.task` names the network: absent for the base model, "temporal_sr" for the temporal SR network (whose
variables are stored as the "generator" and which has no discriminator).
"""

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from flax import traverse_util

from metaportrait_jax.errors import UserError
from metaportrait_jax.config import ConfigError, config_from_json, save_config
from metaportrait_jax.models.discriminator import Discriminator
from metaportrait_jax.models.generator import Generator, dummy_batch
from metaportrait_jax.models.temporal_sr import TemporalSR, dummy_clip

TEMPORAL_SR = "temporal_sr"
MODEL_SUBDIR = "model"
CONFIG_FILE = "config.json"


class CheckpointError(UserError):
    """A directory is not a usable model checkpoint (or would overwrite one)."""


def abstract_generator_variables(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Shapes and dtypes (`jax.ShapeDtypeStruct`) of `Generator(model_config)`'s variables, without computing them."""
    generator = Generator(model_config)
    return jax.eval_shape(lambda: generator.init(jax.random.key(0), dummy_batch(model_config)))


def abstract_model_variables(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Shapes and dtypes of the variables of the network `config` describes (`config.task`, `config.model`)."""
    if config.get("task") == TEMPORAL_SR:
        network = TemporalSR(config.model)
        return jax.eval_shape(lambda: network.init(jax.random.key(0), dummy_clip(config.model)))
    return abstract_generator_variables(config.model)


def abstract_discriminator_variables(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Shapes and dtypes of `Discriminator(model_config)`'s variables for images of `model_config.image_size`."""
    discriminator = Discriminator(model_config)
    size = model_config.image_size
    return jax.eval_shape(lambda: discriminator.init(jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32)))


def save_model(directory: str, config: ml_collections.ConfigDict, generator_variables: Mapping[str, Any],
               discriminator_variables: Mapping[str, Any] | None = None) -> None:
    """Writes the variables to `directory/model/` (Orbax; waits until written), the config to `directory/config.json`.

    Refuses a directory that already holds a model checkpoint. In a multi-process job every process calls it with the
    same (global or host) arrays: Orbax's save is collective and writes each array once; process 0 writes the config.
    """
    directory = os.path.abspath(directory)
    model_dir = os.path.join(directory, MODEL_SUBDIR)
    if os.path.exists(model_dir):
        raise CheckpointError(f"{directory}: already holds a model checkpoint; choose a new output directory")
    os.makedirs(directory, exist_ok=True)
    tree = {"generator": dict(generator_variables)}
    if discriminator_variables is not None:
        tree["discriminator"] = dict(discriminator_variables)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(model_dir, tree)
    checkpointer.wait_until_finished()
    checkpointer.close()
    # Written last: a directory with config.json holds a complete checkpoint.
    if jax.process_index() == 0:
        save_config(config, os.path.join(directory, CONFIG_FILE))


def _not_a_checkpoint(directory: str, reason: str) -> CheckpointError:
    return CheckpointError(f"{directory}: not a metaportrait-jax model checkpoint ({reason})")


def _shape_mismatches(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    stored_flat = traverse_util.flatten_dict(stored)
    expected_flat = traverse_util.flatten_dict(expected)
    problems = [f"missing {'/'.join(k)}" for k in expected_flat if k not in stored_flat]
    problems += [f"unexpected {'/'.join(k)}" for k in stored_flat if k not in expected_flat]
    problems += [f"{'/'.join(k)} stored {tuple(stored_flat[k].shape)}, model expects {tuple(v.shape)}"
                 for k, v in expected_flat.items() if k in stored_flat and tuple(stored_flat[k].shape) != v.shape]
    return problems


def load_model(directory: str) -> tuple[ml_collections.ConfigDict, dict[str, Any], dict[str, Any] | None]:
    """Reads a checkpoint written by `save_model`: (config, generator variables, discriminator variables or None).

    Arrays are restored into the structure `Generator(config.model).init` produces, on the first local device.
    """
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise _not_a_checkpoint(directory, "no such directory")
    config_path = os.path.join(directory, CONFIG_FILE)
    model_dir = os.path.join(directory, MODEL_SUBDIR)
    if not os.path.isfile(config_path):
        raise _not_a_checkpoint(directory, f"no {CONFIG_FILE}")
    if not os.path.isdir(model_dir):
        raise _not_a_checkpoint(directory, f"no {MODEL_SUBDIR}/ directory")
    try:
        config = config_from_json(config_path)
    except ConfigError as e:
        raise _not_a_checkpoint(directory, str(e)) from None
    if "model" not in config:
        raise _not_a_checkpoint(directory, f"{CONFIG_FILE} has no 'model' section")
    checkpointer = ocp.StandardCheckpointer()
    try:
        item_metadata = checkpointer.metadata(model_dir).item_metadata
    except (FileNotFoundError, ValueError, OSError) as e:
        raise _not_a_checkpoint(directory, f"unreadable {MODEL_SUBDIR}/: {e}") from None
    if item_metadata is None:
        raise _not_a_checkpoint(directory, f"{MODEL_SUBDIR}/ holds no Orbax checkpoint")
    stored = item_metadata.tree
    top_level = sorted(stored) if isinstance(stored, Mapping) else []
    if "generator" not in top_level or not set(top_level) <= {"generator", "discriminator"}:
        raise _not_a_checkpoint(directory, f"{MODEL_SUBDIR}/ holds {top_level}, expected generator [+ discriminator]")
    try:
        target = {"generator": abstract_model_variables(config)}
    except (ValueError, TypeError, AttributeError) as e:
        raise _not_a_checkpoint(directory, f"unusable model section in {CONFIG_FILE}: {e}") from None
    if "discriminator" in stored and config.get("task") != TEMPORAL_SR:
        target["discriminator"] = abstract_discriminator_variables(config.model)
    problems = _shape_mismatches(stored, target)
    if problems:
        listed = "; ".join(problems[:10]) + (f"; ... {len(problems) - 10} more" if len(problems) > 10 else "")
        raise _not_a_checkpoint(directory, f"its arrays do not fit the model in {CONFIG_FILE}: {listed}")
    device = jax.local_devices()[0]
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(device)), target)
    restored = checkpointer.restore(model_dir, target)
    checkpointer.close()
    return config, restored["generator"], restored.get("discriminator")


def check_same_model(have: ml_collections.ConfigDict, want: ml_collections.ConfigDict, source: str) -> None:
    """Raises a CheckpointError naming the fields where model config `have` (from `source`) differs from `want`."""
    def flat(config: ml_collections.ConfigDict) -> dict:  # JSON turns tuples into lists
        return {k: tuple(v) if isinstance(v, list) else v
                for k, v in traverse_util.flatten_dict(config.to_dict()).items()}

    have_flat, want_flat = flat(have), flat(want)
    differing = [f"{'.'.join(k)}: {have_flat.get(k)!r} vs {want_flat.get(k)!r}"
                 for k in sorted(set(have_flat) | set(want_flat)) if have_flat.get(k) != want_flat.get(k)]
    if differing:
        raise CheckpointError(f"{source}: its model differs from the config's (checkpoint vs config): "
                              f"{'; '.join(differing)}")
