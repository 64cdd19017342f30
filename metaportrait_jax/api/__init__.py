"""The public Python API: one function per `metaportrait-jax` subcommand, each taking a config (or paths) and
returning a small result; the CLI only parses arguments, calls one of these and prints.

    from metaportrait_jax import api
    from metaportrait_jax.config import load_config

    warp = api.train(load_config("configs/pretrain_warp.py:tiny"), "runs/warp")     # TrainResult
    mine = api.personalize("runs/meta/export", "data/persons", "runs/me", steps=30)  # .history: loss per step
    api.animate(mine.export, "me.jpg", "driving.mp4", "me.mp4")                     # AnimationReport

Names are resolved on first use (`api.train` imports JAX and the training code, `import metaportrait_jax.api`
alone does not), so a command line that only parses its arguments stays fast.
"""

import importlib

_TRAINING, _INFERENCE = "metaportrait_jax.api.training", "metaportrait_jax.api.inference"
# not api/demo.py: importing a submodule binds its name on this package, which would hide the function `demo`
_END_TO_END = "metaportrait_jax.api.end_to_end"
_WHERE = {
    "TrainResult": _TRAINING, "train": _TRAINING, "personalize": _TRAINING,
    "open_frames": "metaportrait_jax.data.datasets", "open_person_frames": _TRAINING,
    "load_identity_encoder": _TRAINING,
    "animate": _INFERENCE, "animate_official": _INFERENCE, "AnimationReport": _INFERENCE, "enhance": _INFERENCE,
    "evaluate": _INFERENCE, "markdown_report": _INFERENCE, "convert": _INFERENCE, "Converted": _INFERENCE,
    "preprocess_videos": _INFERENCE, "format_report": _INFERENCE, "Preprocessed": _INFERENCE,
    "build_data": _INFERENCE, "summarize": _INFERENCE, "reenact": _INFERENCE, "Reenactment": _INFERENCE,
    "demo": _END_TO_END, "DemoSettings": _END_TO_END,
    "DemoResult": _END_TO_END, "plot_losses": _END_TO_END,
    "adaptation_benchmark": "metaportrait_jax.api.benchmark",
    "doctor": "metaportrait_jax.api.diagnostics", "DoctorReport": "metaportrait_jax.api.diagnostics",
    "export": "metaportrait_jax.eval.export", "ExportReport": "metaportrait_jax.eval.export",
    "UserError": "metaportrait_jax.errors", "initialize_processes": "metaportrait_jax.train.distributed",
    "load_model": "metaportrait_jax.train.checkpoint",
    "load_sn_free_generator": "metaportrait_jax.train.checkpoint",
    "TASKS": "metaportrait_jax.train.tasks", "Task": "metaportrait_jax.train.tasks",
    "register_task": "metaportrait_jax.train.tasks",
    # what research code subclasses (examples/): the pretraining and the meta-training trainers
    "Trainer": "metaportrait_jax.train.step", "MetaTrainer": "metaportrait_jax.train.meta_step",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'metaportrait_jax.api' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
