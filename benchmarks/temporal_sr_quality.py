"""Temporal SR quality on the synthetic benchmark, with and without the module (PSNR, LPIPS, warping error).

  python benchmarks/temporal_sr_quality.py --checkpoint runs/sr_tiny/export --data data/tfds/.../r32_sr/1.0.0

Train first, e.g. `metaportrait-jax train --config configs/temporal_sr.py:tiny --workdir runs/sr_tiny`; the data
directory is the one that run built (its `config.json`: data.data_dir + synthetic_talking_heads/<config>/1.0.0).
"""

import argparse
import json

from metaportrait_jax.eval.sr_quality import evaluate_sr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a temporal SR model checkpoint")
    parser.add_argument("--data", required=True, help="a built synthetic *_sr data set directory")
    parser.add_argument("--split", default="test")
    parser.add_argument("--clips", type=int, help="score only the first N clips")
    parser.add_argument("--grid", help="also write a PNG: 4 frames of the first clip, bilinear | SR | target")
    args = parser.parse_args()
    report = evaluate_sr(args.checkpoint, args.data, args.split, args.clips, grid_path=args.grid)
    print(json.dumps(report, indent=1))
    print(f"{'':<14}{'PSNR dB':>9}{'LPIPS':>8}{'warp err':>10}")
    for name, row in report.items():
        cells = [f"{row[k]:>{w}.4f}" if k in row else " " * w
                 for k, w in (("psnr_db", 9), ("lpips", 8), ("warping_error", 10))]
        print(f"{name:<14}{''.join(cells)}")


if __name__ == "__main__":
    main()
