"""The adaptation benchmark: meta-train each algorithm from one pretrained model at an equal wall-time budget, then
personalisation curves of every start on held-out persons (JSON, Markdown table, PNG)."""

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from metaportrait_jax.api.training import train
from metaportrait_jax.data.datasets import open_frames
from metaportrait_jax.errors import UserError
from metaportrait_jax.eval.adaptation import EVAL_STEPS, AdaptationCurves, write_report
from metaportrait_jax.train.checkpoint import CONFIG_FILE, load_sn_free_generator
from metaportrait_jax.train.loop import read_history


# what the benchmark sets itself in every meta-training run: the same start and budget for all
BUDGET_FIELDS = ("init_from", "train.steps", "train.max_seconds")


def meta_training_runs(algorithms: Sequence[str] | Mapping[str, Mapping[str, Any]], config: ml_collections.ConfigDict
                       ) -> dict[str, dict[str, Any]]:
    """{label: config fields ("a.b": value)} of each meta-training run: names stand for {name: {"meta.algorithm":
    name}}; a mapping is taken as it is (e.g. {"anil": {"task": "anil", "meta.algorithm": "fomaml"}}), each field
    one `config` has."""
    if isinstance(algorithms, str):
        raise UserError(f"algorithms: expected a sequence of names or a mapping, got the string {algorithms!r}")
    if not isinstance(algorithms, Mapping):
        return {name: {"meta.algorithm": name} for name in algorithms}
    runs = {str(label): dict(fields) for label, fields in algorithms.items()}
    for label, fields in runs.items():
        if label == "pretrained" or not label or os.sep in label:
            raise UserError(f"algorithms: {label!r} cannot label a run (it names a start and a run directory)")
        fixed = sorted(set(fields) & set(BUDGET_FIELDS))
        if fixed:
            raise UserError(f"algorithms[{label!r}]: the benchmark sets {', '.join(fixed)} itself")
        unknown = [key for key in fields if not _has_field(config, key)]
        if unknown:  # ConfigDict would add them silently: a misspelt field would change nothing
            raise UserError(f"algorithms[{label!r}]: {', '.join(unknown)} not in the config")
    return runs


def _has_field(config: ml_collections.ConfigDict, dotted: str) -> bool:
    *parents, name = dotted.split(".")
    for parent in parents:
        config = config.get(parent)
        if not isinstance(config, ml_collections.ConfigDict):
            return False
    return name in config


def adaptation_benchmark(config: ml_collections.ConfigDict, pretrained: str, workdir: str,
                         algorithms: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("reptile", "fomaml", "maml"),
                         seconds_per_algorithm: float = 600.0, meta_steps: int = 10 ** 6, persons: int = 8,
                         batch_size: int = 4, eval_steps: Sequence[int] = EVAL_STEPS, progress: bool = True,
                         log: Callable[[str], None] = print) -> dict | None:
    """Runs (or resumes) the benchmark in `workdir` with the meta-training `config`: per entry of `algorithms` (names
    of `meta.algorithm`, or {label: {"a.b": value}} config fields, see `meta_training_runs`) a run from `pretrained`
    for `seconds_per_algorithm` or `meta_steps`, then personalisation curves at `eval_steps`. Returns the report
    written to `workdir/adaptation.json` (with `paths`), or None if a signal stopped a meta-training run."""
    workdir = os.path.abspath(workdir)
    runs = meta_training_runs(algorithms, config)  # all checked before the first run starts
    _, start = load_sn_free_generator(pretrained)
    starts, costs = {"pretrained": start}, {}
    for label, fields in runs.items():
        run_dir = os.path.join(workdir, label)
        export = os.path.join(run_dir, "export")
        if os.path.exists(os.path.join(export, CONFIG_FILE)):  # finished by an earlier call
            log(f"meta-trained {label}: {export}")
        else:
            log(f"meta-training {label} for {seconds_per_algorithm} s (at most {meta_steps} steps)")
            recipe = ml_collections.ConfigDict(config.to_dict())
            recipe.update_from_flattened_dict(fields)
            recipe.update_from_flattened_dict({"init_from": pretrained, "train.steps": meta_steps,
                                               "train.max_seconds": float(seconds_per_algorithm)})
            # it differentiates through Adam's sqrt(v + eps_root): needs eps_root > 0
            if recipe.meta.algorithm == "maml" and "train.adam_eps_root" not in fields:
                recipe.train.adam_eps_root = 1e-16
            if train(recipe, run_dir, progress=progress).export is None:
                log(f"stopped early; rerun the same command to resume from {workdir}")
                return None
        last = read_history(run_dir)[-1]
        costs[label] = {"meta_steps": last["step"], "seconds": last["elapsed_seconds"]}
        starts[label] = load_sn_free_generator(export)[1]
    held_out = ml_collections.ConfigDict(config.to_dict())
    held_out.data.split = "test"
    curves = AdaptationCurves(config.model, open_frames(held_out.data, config.model), eval_steps,
                              batch_size=batch_size, seed=config.seed)
    results, _ = curves.run(starts, curves.persons()[:persons])
    paths = write_report(results, "pretrained", workdir)
    with open(paths["json"]) as f:
        report = json.load(f)
    report["meta_training"] = costs
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=1)
    with open(paths["md"]) as f:
        log(f.read())
    log(f"adaptation benchmark: {paths['json']}, {paths['md']}, {paths['png']}")
    return {**report, "paths": paths}
