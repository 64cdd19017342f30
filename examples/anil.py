"""A new meta-algorithm, ANIL ("almost no inner loop"): the inner loop adapts only the SPADE decoder, the outer
loop the whole generator. Registered as the task "anil", meta-trained from a pretrained tiny model and compared
in the adaptation benchmark with that model, and with `--runs fomaml,anil` also with FOMAML (the same outer rule,
every module adapted; a second meta-step program to compile).

  python examples/anil.py [--pretrained CHECKPOINT] [--steps 1] [--seconds 10] [--inner-steps 1] [--runs anil]
"""

import dataclasses
import os

import jax
import optax

import quick_pretrain
from metaportrait_jax import api

DECODER = "SPDAE_G"  # the generator's top-level SPADE decoder module


def decoder_labels(params: dict) -> dict:
    """"adapt" for every leaf of the decoder, "keep" for the rest (ladder, dense motion, encoder, fusion)."""
    return {name: jax.tree.map(lambda _: "adapt" if name == DECODER else "keep", module)
            for name, module in params.items()}


class AnilTrainer(api.MetaTrainer):
    """MetaTrainer whose per-task optimiser moves the decoder alone; every meta-algorithm uses `inner_tx`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # the usual inner optimiser (clip, Adam) on the decoder's gradients; zero updates elsewhere
        self.inner_tx = optax.multi_transform({"adapt": self.inner_tx, "keep": optax.set_to_zero()},
                                              decoder_labels)
        self.description = f"meta-train ANIL ({self.meta.algorithm} outer rule)"


api.register_task("anil", dataclasses.replace(api.TASKS["meta"], trainer=AnilTrainer))


def main() -> None:
    parser = quick_pretrain.parser(__doc__, "meta-training (per algorithm)", steps=1, seconds=10.0)
    parser.add_argument("--inner-steps", type=int, default=1, help="meta.inner_steps (each one lengthens compiling)")
    parser.add_argument("--runs", default="anil", help="which of fomaml and anil to meta-train (comma-separated)")
    parser.add_argument("--persons", type=int, default=2, help="held-out persons to personalise")
    parser.add_argument("--eval-steps", default="0,1,2,5", help="personalisation steps to score at")
    args = quick_pretrain.parse_args(parser)
    pretrained = quick_pretrain.pretrained(args)
    config = quick_pretrain.recipe("meta_train", args, args.steps)
    config.meta.update(tasks=2, support=2, query=2, inner_steps=args.inner_steps)
    # one config per run: ANIL is the "anil" task with FOMAML's outer rule
    runs = {"fomaml": {"meta.algorithm": "fomaml"}, "anil": {"task": "anil", "meta.algorithm": "fomaml"}}
    report = api.adaptation_benchmark(
        config, pretrained, os.path.join(args.root, "anil"), {label: runs[label] for label in args.runs.split(",")},
        seconds_per_algorithm=args.seconds, meta_steps=args.steps, persons=args.persons, batch_size=2,
        eval_steps=[int(s) for s in args.eval_steps.split(",")], progress=False)
    if report is None:
        raise SystemExit("stopped early; run the same command again to resume")
    for label, cost in report["meta_training"].items():
        print(f"{label}: {cost['meta_steps']} meta-steps in {cost['seconds']:.0f} s")


if __name__ == "__main__":  # the data builder's worker processes import this file again
    main()
