"""The adaptation benchmark: meta-train each algorithm from one pretrained model at an equal wall-time budget, then
personalisation curves of every start on held-out persons (JSON, Markdown table, PNG)."""

import json
import os
from collections.abc import Callable, Sequence

import ml_collections

from metaportrait_jax.api.training import train
from metaportrait_jax.data.datasets import open_frames
from metaportrait_jax.eval.adaptation import AdaptationCurves, write_report
from metaportrait_jax.train.checkpoint import CONFIG_FILE, load_sn_free_generator
from metaportrait_jax.train.loop import read_history


def adaptation_benchmark(config: ml_collections.ConfigDict, pretrained: str, workdir: str,
                         algorithms: Sequence[str] = ("reptile", "fomaml", "maml"),
                         seconds_per_algorithm: float = 600.0, meta_steps: int = 10 ** 6, persons: int = 8,
                         batch_size: int = 4, progress: bool = True,
                         log: Callable[[str], None] = print) -> dict | None:
    """Runs (or resumes) the benchmark in `workdir` with the meta-training `config` (its `meta.algorithm`,
    `init_from`, `train.steps` and `train.max_seconds` are set per algorithm); returns the report written to
    `workdir/adaptation.json` (with `paths`), or None if a signal stopped a meta-training run."""
    workdir = os.path.abspath(workdir)
    _, start = load_sn_free_generator(pretrained)
    starts, costs = {"pretrained": start}, {}
    for algorithm in algorithms:
        run_dir = os.path.join(workdir, algorithm)
        export = os.path.join(run_dir, "export")
        if os.path.exists(os.path.join(export, CONFIG_FILE)):  # finished by an earlier call
            log(f"meta-trained {algorithm}: {export}")
        else:
            log(f"meta-training {algorithm} for {seconds_per_algorithm} s (at most {meta_steps} steps)")
            recipe = ml_collections.ConfigDict(config.to_dict())
            recipe.update_from_flattened_dict({"meta.algorithm": algorithm, "init_from": pretrained,
                                               "train.steps": meta_steps,
                                               "train.max_seconds": float(seconds_per_algorithm)})
            if algorithm == "maml":  # it differentiates through Adam's sqrt(v + eps_root): needs eps_root > 0
                recipe.train.adam_eps_root = 1e-16
            if train(recipe, run_dir, progress=progress).export is None:
                log(f"stopped early; rerun the same command to resume from {workdir}")
                return None
        last = read_history(run_dir)[-1]
        costs[algorithm] = {"meta_steps": last["step"], "seconds": last["elapsed_seconds"]}
        starts[algorithm] = load_sn_free_generator(export)[1]
    held_out = ml_collections.ConfigDict(config.to_dict())
    held_out.data.split = "test"
    curves = AdaptationCurves(config.model, open_frames(held_out.data, config.model), batch_size=batch_size,
                              seed=config.seed)
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
