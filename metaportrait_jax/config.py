"""Loading `configs/*.py` files and applying `--config.a.b=value` overrides."""

import ast
import importlib.util
import json
import os
import sys
from collections.abc import Sequence

import ml_collections

from metaportrait_jax.errors import UserError

# The recipes of this checkout (configs/ beside the package): the CLI's defaults and the demo's stages.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_CONFIGS = os.path.join(REPO, "configs")
REPO_PRETRAINED = os.path.join(REPO, "pretrained")  # the models trained by our recipes, shipped (pretrained/README.md)


class ConfigError(UserError):
    """A config file or override the user gave is unusable."""


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path.py[:variant]`, calls its `get_config(variant)` and applies overrides.

    Args:
      spec: a config file path, optionally followed by `:variant`.
      overrides: strings `a.b=value` (the `--config.` prefix already removed).
    """
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    module_spec = importlib.util.spec_from_file_location(_module_name(path), path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{path}: not a valid Python config file ({e.msg}, line {e.lineno})") from None
    except ImportError as e:  # e.g. `from configs import common` in a copy outside configs/, not installed
        raise ConfigError(f"{path}: {e} (keep the file in configs/ or run `make install`)") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: has no get_config(variant) function")
    config = module.get_config(variant)
    apply_overrides(config, overrides, source=path)
    return config


def _module_name(path: str) -> str:
    """The name to load a config file under. A file of a package directory (configs/ has an `__init__.py`) is that
    package's submodule, so `from configs import common` finds its sibling even when the package is not installed:
    the package is registered from this directory unless it is imported already."""
    directory = os.path.dirname(os.path.realpath(path))
    package, stem = os.path.basename(directory), os.path.splitext(os.path.basename(path))[0]
    init = os.path.join(directory, "__init__.py")
    if not (os.path.isfile(init) and package.isidentifier() and stem.isidentifier()):
        return f"_config_{abs(hash(path))}"
    if package not in sys.modules:  # this directory's package, whatever else sys.path holds (and sys.path as is)
        spec = importlib.util.spec_from_file_location(package, init, submodule_search_locations=[directory])
        sys.modules[package] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[package])
    where = [os.path.realpath(p) for p in getattr(sys.modules[package], "__path__", ())]
    if directory not in where:  # its siblings would come from elsewhere
        raise ConfigError(f"{path}: a package {package!r} from {where} is imported already; the config file imports "
                          f"its siblings from that one")
    return f"{package}.{stem}"


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str], source: str = "config") -> None:
    """Sets `a.b=value` fields in place; the value is parsed as a Python literal, else kept as a string."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like --config.a.b=value")
        node = config
        *parents, leaf = key.split(".")
        for name in parents:
            if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
                raise ConfigError(f"{source}: override {key!r}: no section {name!r}")
            node = node[name]
        if leaf not in node:
            raise ConfigError(f"{source}: override {key!r}: no field {leaf!r}")
        value = _parse_value(text)
        old = node[leaf]
        if isinstance(old, tuple) and isinstance(value, list):
            value = tuple(value)
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if old is not None and not isinstance(value, type(old)):
            raise ConfigError(f"{source}: override {key}={text!r}: expected {type(old).__name__}, got "
                              f"{type(value).__name__}")
        node[leaf] = value


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


def config_from_json(path: str) -> ml_collections.ConfigDict:
    """Reads a resolved config written by `save_config`; tuples come back as tuples."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the resolved config ({e})") from None
    return ml_collections.ConfigDict(_lists_to_tuples(data))


def save_config(config: ml_collections.ConfigDict, path: str) -> None:
    with open(path, "w") as f:
        f.write(config_to_json(config))


def _lists_to_tuples(value):
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value
