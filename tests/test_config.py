"""The recipes in configs/: every file loads for each of its variants, the personalisation recipe fills in for a
checkpoint's model, and `load_config` loads a file of a config package whether or not that package is importable."""

import os
import subprocess
import sys

import ml_collections
import pytest

from metaportrait_jax.config import REPO_CONFIGS, ConfigError, load_config
from metaportrait_jax.eval.adaptation import personalization_config
from metaportrait_jax.models.config import generator_config
from metaportrait_jax.train.step import check_train_config

REPO = os.path.dirname(REPO_CONFIGS)
VARIANTS = {"pretrain_warp.py": ("", "tiny", "official_256"), "pretrain_full.py": ("", "tiny", "official_256"),
            "meta_train.py": ("", "tiny", "official_256"), "temporal_sr.py": ("", "tiny", "official_512"),
            "personalize.py": ("", "64", "256"), "official_256.py": ("",), "tiny.py": ("",)}


def test_every_config_file_is_listed():
    recipes = {f for f in os.listdir(REPO_CONFIGS) if f.endswith(".py") and f not in ("__init__.py", "common.py")}
    assert recipes == set(VARIANTS)


@pytest.mark.parametrize("spec", [f"{name}:{v}" for name, variants in VARIANTS.items() for v in variants])
def test_every_recipe_loads_for_each_variant(spec):
    config = load_config(os.path.join(REPO_CONFIGS, spec))
    assert isinstance(config.model, ml_collections.ConfigDict) and "inference" in config
    if "train" in config and config.get("task") != "temporal_sr":
        check_train_config(config.train)
        assert config.train.pyramid_scales == ((1.0, 0.5, 0.25, 0.125) if config.model.image_size >= 128
                                               else (1.0, 0.5, 0.25))


@pytest.mark.parametrize("spec, message", [("pretrain_warp.py:huge", "unknown variant 'huge'"),
                                           ("temporal_sr.py:official_256", "unknown variant 'official_256'"),
                                           ("personalize.py:tiny", "the model's image size, got 'tiny'")])
def test_an_unknown_variant_is_named(spec, message):
    with pytest.raises(ConfigError, match=message):
        load_config(os.path.join(REPO_CONFIGS, spec))


@pytest.mark.parametrize("preset", ["tiny", "official_256"])
def test_the_personalization_recipe_takes_the_checkpoints_model_and_the_callers_settings(preset):
    model = generator_config(preset)
    config = personalization_config(model, 30, 0.0, 2, 1e-3, seed=7)
    assert config.model.to_dict() == model.to_dict()
    assert (config.seed, config.train.steps, config.train.max_seconds, config.train.batch_size,
            config.train.learning_rate) == (7, 30, 0.0, 2, 1e-3)
    assert config.train.pyramid_scales == (1.0, 0.5, 0.25) + ((0.125,) if preset == "official_256" else ())
    check_train_config(config.train)
    # the generator trainer reads the pretraining recipes' training fields: personalisation has them all
    full = load_config(os.path.join(REPO_CONFIGS, f"pretrain_full.py:{preset}"))
    assert set(config.train.to_dict()) == set(full.train.to_dict())
    assert config.train.loss.generator_gan == 0 and not any(config.train.loss.feature_matching)


def test_a_package_config_loads_when_its_package_is_not_importable(tmp_path):
    """The repository's recipes from a process whose sys.path holds neither the repository nor an installed
    `configs` that sits elsewhere; then a config package of another name, with a sibling of its own."""
    package = tmp_path / "my_recipes"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "shared.py").write_text("STEPS = 12\n")
    (package / "run.py").write_text("import ml_collections\nfrom my_recipes import shared\n\n\n"
                                    "def get_config(variant):\n"
                                    "    return ml_collections.ConfigDict(dict(steps=shared.STEPS, variant=variant))\n")
    code = (f"import os, sys\nfrom metaportrait_jax.config import load_config\n"
            f"sys.path[:] = [p for p in sys.path if os.path.realpath(p or '.') != {os.path.realpath(REPO)!r}]\n"
            f"sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]\n"
            f"config = load_config({os.path.join(REPO_CONFIGS, 'meta_train.py:tiny')!r})\n"
            f"assert sys.modules['configs'].__path__ == [{os.path.realpath(REPO_CONFIGS)!r}]\n"
            f"print(config.meta.tasks, load_config({str(package / 'run.py:x')!r}).to_dict())\n")
    # metaportrait_jax from this checkout, imported before sys.path loses it
    env = {**os.environ, "PYTHONPATH": REPO}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "4 {'steps': 12, 'variant': 'x'}"


def test_a_shadowed_config_package_and_a_missing_import_are_named(tmp_path):
    for where in ("a", "b"):
        (tmp_path / where / "twin_recipes").mkdir(parents=True)
        (tmp_path / where / "twin_recipes" / "__init__.py").write_text("")
        (tmp_path / where / "twin_recipes" / "r.py").write_text("def get_config(variant):\n    return None\n")
    assert load_config(str(tmp_path / "a" / "twin_recipes" / "r.py")) is None
    with pytest.raises(ConfigError, match="a package 'twin_recipes' from .* is imported already"):
        load_config(str(tmp_path / "b" / "twin_recipes" / "r.py"))
    lone = tmp_path / "lone.py"
    lone.write_text("from no_such_recipes import common\n")
    with pytest.raises(ConfigError, match="lone.py: No module named 'no_such_recipes'"):
        load_config(str(lone))
