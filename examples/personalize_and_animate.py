"""Personalise a model on a held-out person's first clip, then reenact their second clip (its frames driving the
first clip's source frame) with the personalised and with the starting model: two mp4s and their PSNR.

  python examples/personalize_and_animate.py [--pretrained CHECKPOINT] [--steps 10] [--person 0]
"""

import os

import quick_pretrain
from metaportrait_jax import api


def main() -> None:
    parser = quick_pretrain.parser(__doc__, "personalisation (--seconds: instead of --steps)", steps=10, seconds=None)
    parser.add_argument("--person", type=int, default=0, help="a held-out (test split) person")
    args = quick_pretrain.parse_args(parser)
    start = quick_pretrain.pretrained(args)
    data, out = quick_pretrain.data(args), os.path.join(args.root, "personalize")
    budget = {"seconds": args.seconds} if args.seconds else {"steps": args.steps}
    mine = api.personalize(start, data, os.path.join(out, "model"), person=args.person, clips=[0], batch_size=2,
                           learning_rate=1e-3, progress=False, **budget)
    if mine.export is None:
        raise SystemExit("stopped early; run the same command again to resume")
    print(f"personalised {mine.steps} steps: loss {mine.history[0]['generator_loss']:.3f} -> "
          f"{mine.history[-1]['generator_loss']:.3f}" if mine.history else f"personalised: {mine.export}")
    for name, checkpoint in (("personalised", mine.export), ("starting", start)):
        shown = api.reenact(checkpoint, data, os.path.join(out, f"{name}.mp4"), person=args.person, source_clip=0,
                            driving_clip=1, side_by_side=True)
        print(f"{name} model: {shown.output} ({shown.frames} frames: source | driving | result), "
              f"PSNR {shown.psnr:.2f} dB")


if __name__ == "__main__":  # the data builder's worker processes import this file again
    main()
