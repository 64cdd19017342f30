"""Model checkpoints: `<dir>/model/` (Orbax: the network's variables, stored as "generator", and an optional
discriminator's) + `<dir>/config.json` (the config that made them, with `network`: a `models.networks` name).
"""

import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import traverse_util

from metaportrait_jax.config import ConfigError, config_from_json, save_config
from metaportrait_jax.errors import UserError
from metaportrait_jax.models.networks import NETWORKS, abstract_discriminator_variables, abstract_variables
from metaportrait_jax.models.spectral_fold import fold_spectral_norm

MODEL_SUBDIR = "model"
CONFIG_FILE = "config.json"


class CheckpointError(UserError):
    """A directory is not a usable model checkpoint (or would overwrite one)."""


def save_model(directory: str, config: ml_collections.ConfigDict, generator_variables: Mapping[str, Any],
               discriminator_variables: Mapping[str, Any] | None = None, *, network: str) -> None:
    """Writes the variables of `network` (a `models.networks` name) to `directory/model/` (Orbax; waits until
    written), the config with its `network` to `directory/config.json`.

    Refuses a directory that already holds a model checkpoint. In a multi-process job every process calls it with the
    same (global or host) arrays: Orbax's save is collective and writes each array once; process 0 writes the config.
    """
    directory = os.path.abspath(directory)
    model_dir = os.path.join(directory, MODEL_SUBDIR)
    if os.path.exists(model_dir):
        raise CheckpointError(f"{directory}: already holds a model checkpoint; choose a new output directory")
    if network not in NETWORKS:
        raise ValueError(f"save_model: unknown network {network!r}; expected one of {sorted(NETWORKS)}")
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
        stored = ml_collections.ConfigDict(config.to_dict())
        stored.network = network
        save_config(stored, os.path.join(directory, CONFIG_FILE))


def stored_network(config: ml_collections.ConfigDict) -> str:
    """The network a checkpoint's config names (checkpoints written before the `network` field: temporal SR ones
    had `task='temporal_sr'`, all others hold the generator)."""
    return config.get("network") or ("temporal_sr" if config.get("task") == "temporal_sr" else "generator")


def require_network(config: ml_collections.ConfigDict, network: str, directory: str, hint: str = "") -> None:
    """Raises a CheckpointError unless the checkpoint in `directory` (its `config`) holds `network`."""
    have = stored_network(config)
    if have != network:
        raise CheckpointError(f"{directory}: holds a {have} network, not a {network} one{hint}")


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


def read_checkpoint_config(directory: str) -> ml_collections.ConfigDict:
    """The config of the model checkpoint in `directory`, read without its weights (refused like `load_model`
    refuses a directory that is not a checkpoint)."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise _not_a_checkpoint(directory, "no such directory")
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise _not_a_checkpoint(directory, f"no {CONFIG_FILE}")
    if not os.path.isdir(os.path.join(directory, MODEL_SUBDIR)):
        raise _not_a_checkpoint(directory, f"no {MODEL_SUBDIR}/ directory")
    try:
        config = config_from_json(config_path)
    except ConfigError as e:
        raise _not_a_checkpoint(directory, str(e)) from None
    if "model" not in config:
        raise _not_a_checkpoint(directory, f"{CONFIG_FILE} has no 'model' section")
    return config


def load_model(directory: str) -> tuple[ml_collections.ConfigDict, dict[str, Any], dict[str, Any] | None]:
    """Reads a checkpoint written by `save_model`: (config, network variables, discriminator variables or None).

    Arrays are restored into the structure the config's network (`stored_network`) produces, on the first local
    device.
    """
    directory = os.path.abspath(directory)
    config = read_checkpoint_config(directory)
    model_dir = os.path.join(directory, MODEL_SUBDIR)
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
    network = stored_network(config)
    try:
        target = {"generator": abstract_variables(network, config.model)}
        discriminator = abstract_discriminator_variables(network, config.model) if "discriminator" in stored else None
    except (ValueError, TypeError, AttributeError) as e:
        raise _not_a_checkpoint(directory, f"unusable model section in {CONFIG_FILE}: {e}") from None
    if discriminator is not None:
        target["discriminator"] = discriminator
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


def load_sn_free_generator(directory: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """A generator checkpoint as plain weights: (config with `model.use_sn=False`, `{"params": ...}`).

    Spectral norm, if the checkpoint has it, is folded into the kernels (the official `--remove_sn`: σ from the
    stored u, v), so the outputs are those of the checkpoint in eval mode. Meta-training and personalisation start
    here: they adapt the actual weights.
    """
    config, variables, _ = load_model(directory)
    require_network(config, "generator", directory)
    return without_spectral_norm(config, variables)


def without_spectral_norm(config: ml_collections.ConfigDict, variables: Mapping[str, Any]
                          ) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """A loaded generator checkpoint's (config, variables) with spectral norm folded in, if it has it."""
    if "spectral" in variables:
        variables = fold_spectral_norm(variables, config.model)
        config.model.use_sn = False
    return config, {"params": variables["params"]}
