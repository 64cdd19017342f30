"""XLA's convolution gradients vs `metaportrait_jax.ops.conv.conv2d` (custom weight gradient), per shape and per step.

  python benchmarks/conv_grad.py                          # shape table, then tiny and official_256 training steps
  python benchmarks/conv_grad.py --no-generator --repeats 9
  python benchmarks/conv_grad.py --no-shapes --variants tiny

Shape table: milliseconds of forward, input gradient (dx), weight gradient (dW) and the full VJP (dx and dW) for
`lax` (jax.lax.conv_general_dilated and its own transpose rules) and `ours` (conv2d); the two are timed alternately
in one process, median of --repeats. Generator: forward and an L1 training step (jax.value_and_grad of the L1 loss
of the `full` prediction w.r.t. all params, train mode, batch 1, random inputs) with every `layers.Conv` on lax or
on conv2d. The swap patches the `jax` name inside `metaportrait_jax.models.layers` with a proxy whose
`lax.conv_general_dilated` routes the layers' NHWC/HWIO convolutions to conv2d, and restores it afterwards.

Other processes on the same cores make the numbers worthless: the load average is printed before and after.
"""

import argparse
import contextlib
import os
import statistics
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from metaportrait_jax.models import layers
from metaportrait_jax.models.config import generator_config
from metaportrait_jax.models.generator import Generator, dummy_batch
from metaportrait_jax.ops.conv import conv2d

# (label, batch, size, in channels, out channels, kernel, stride, padding): the generator's heavy and typical convs.
SHAPES = [
    ("3x3 64->64 @256", 1, 256, 64, 64, 3, 1, 1),
    ("3x3 82->128 @256 (ladder)", 1, 256, 82, 128, 3, 1, 1),
    ("3x3 128->64 @256 (decoder)", 1, 256, 128, 64, 3, 1, 1),
    ("3x3 67->64 @256", 1, 256, 67, 64, 3, 1, 1),
    ("3x3 9->128 @256", 1, 256, 9, 128, 3, 1, 1),
    ("7x7 9->64 @256", 1, 256, 9, 64, 7, 1, 3),
    ("3x3 128->128 @128", 1, 128, 128, 128, 3, 1, 1),
    ("3x3 146->128 @128", 1, 128, 146, 128, 3, 1, 1),
    ("3x3 256->512 @64", 1, 64, 256, 512, 3, 1, 1),
    ("3x3 512->512 @32", 1, 32, 512, 512, 3, 1, 1),
    ("3x3 1024->1024 @16", 1, 16, 1024, 1024, 3, 1, 1),
    ("3x3 512->512 @8", 1, 8, 512, 512, 3, 1, 1),
    ("7x7 512->2 @64 (flow head)", 1, 64, 512, 2, 7, 1, 3),
    ("1x1 64->32 @256", 1, 256, 64, 32, 1, 1, 0),
    ("1x1 512->256 @32", 1, 32, 512, 256, 1, 1, 0),
    ("3x3/2 64->128 @128", 1, 128, 64, 128, 3, 2, 1),
    ("3x3/2 256->512 @32", 1, 32, 256, 512, 3, 2, 1),
    ("3x3 64->64 @64 b8", 8, 64, 64, 64, 3, 1, 1),
    ("3x3 128->128 @32 b8", 8, 32, 128, 128, 3, 1, 1),
    ("3x3/2 64->128 @128 b8", 8, 128, 64, 128, 3, 2, 1),
]


def _load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def _alternate(fns: dict, args: dict, repeats: int) -> dict[str, float]:
    """Median milliseconds of each compiled fn, calling them in turn `repeats` times (after one warm-up call)."""
    for name, fn in fns.items():
        jax.block_until_ready(fn(*args[name]))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args[name]))
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def _lax_conv(x, kernel, stride, padding):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def time_shape(batch, size, cin, cout, k, stride, padding, repeats):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, size, size, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
    g = jnp.asarray(rng.standard_normal(_lax_conv(x, kernel, stride, padding).shape), jnp.float32)
    fns, args, errors = {}, {}, {}
    for impl, conv in (("lax", _lax_conv), ("ours", conv2d)):
        def vjp(x, kernel, g, conv=conv):
            return jax.vjp(lambda a, b: conv(a, b, stride, padding), x, kernel)[1](g)

        fns[f"fwd {impl}"] = jax.jit(lambda x, kernel, conv=conv: conv(x, kernel, stride, padding))
        fns[f"dx {impl}"] = jax.jit(lambda x, kernel, g, vjp=vjp: vjp(x, kernel, g)[0])
        fns[f"dW {impl}"] = jax.jit(lambda x, kernel, g, vjp=vjp: vjp(x, kernel, g)[1])
        fns[f"vjp {impl}"] = jax.jit(vjp)
        args.update({f"fwd {impl}": (x, kernel), f"dx {impl}": (x, kernel, g), f"dW {impl}": (x, kernel, g),
                     f"vjp {impl}": (x, kernel, g)})
    for part in ("dx", "dW"):
        ref, ours = fns[f"{part} lax"](x, kernel, g), fns[f"{part} ours"](x, kernel, g)
        errors[part] = float(jnp.max(jnp.abs(ours - ref)) / jnp.max(jnp.abs(ref)))
    return _alternate(fns, args, repeats), errors


METHOD = ["auto"]  # conv2d's weight_grad_method in the generator runs (--method)


class _LaxProxy:
    """`jax.lax` with `conv_general_dilated` routed to conv2d where the call is a plain NHWC/HWIO conv."""

    def __getattr__(self, name):
        return getattr(jax.lax, name)

    @staticmethod
    def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                             dimension_numbers=None, feature_group_count=1, **kwargs):
        (s0, s1), ((p0, p1), (p2, p3)) = window_strides, padding
        plain = (tuple(dimension_numbers or ()) == ("NHWC", "HWIO", "NHWC") and s0 == s1 and p0 == p1 == p2 == p3
                 and lhs_dilation in (None, (1, 1)) and rhs_dilation in (None, (1, 1)) and feature_group_count == 1
                 and not kwargs)
        if plain:
            return conv2d(lhs, rhs, s0, p0, weight_grad_method=METHOD[0])
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers, feature_group_count, **kwargs)


class _JaxProxy(types.ModuleType):
    """`jax` with `lax` replaced by `_LaxProxy`."""

    lax = _LaxProxy()

    def __getattr__(self, name):
        return getattr(jax, name)


@contextlib.contextmanager
def layers_use_conv2d():
    """Within the block, `metaportrait_jax.models.layers` sees a `jax` whose lax conv is conv2d (trace inside it)."""
    proxy = _JaxProxy("jax")
    original = layers.jax
    layers.jax = proxy
    try:
        yield
    finally:
        layers.jax = original


def time_generator(variant: str, repeats: int) -> dict[str, float]:
    config = generator_config(variant)
    model = Generator(config)
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.uniform(size=v.shape), jnp.float32) for k, v in dummy_batch(config).items()}
    target = jnp.asarray(rng.uniform(size=batch["source"].shape), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0), batch)
    params = variables["params"]
    spectral = {k: v for k, v in variables.items() if k != "params"}

    fns, args = {}, {}
    for impl in ("lax", "ours"):
        # Fresh closures per implementation: jit caches traces by function, and the swap happens at trace time.
        def prediction(params):
            out, _ = model.apply({**spectral, "params": params}, batch, train=True, mutable=["spectral"])
            return out["prediction"]

        def l1_step(params, prediction=prediction):
            return jax.value_and_grad(lambda p: jnp.mean(jnp.abs(prediction(p) - target)))(params)

        with layers_use_conv2d() if impl == "ours" else contextlib.nullcontext():
            fns[f"forward {impl}"] = jax.jit(prediction).lower(params).compile()
            fns[f"l1 step {impl}"] = jax.jit(l1_step).lower(params).compile()
        args[f"forward {impl}"] = args[f"l1 step {impl}"] = (params,)
    (loss_lax, grads_lax), (loss_ours, grads_ours) = fns["l1 step lax"](params), fns["l1 step ours"](params)
    worst = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-30))
                for a, b in zip(jax.tree_util.tree_leaves(grads_lax), jax.tree_util.tree_leaves(grads_ours)))
    times = _alternate(fns, args, repeats)
    times["loss diff"] = abs(float(loss_lax) - float(loss_ours))
    times["worst grad rel diff"] = worst
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["tiny", "official_256"])
    parser.add_argument("--no-shapes", action="store_true")
    parser.add_argument("--no-generator", action="store_true")
    parser.add_argument("--only", nargs="*", default=None, help="substrings of shape labels to run")
    parser.add_argument("--method", default="auto", help="conv2d weight_grad_method for the generator runs")
    args = parser.parse_args()
    METHOD[0] = args.method
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, {os.cpu_count()} cpus, jax {jax.__version__}, "
          f"fp32; {_load()}", flush=True)
    if not args.no_shapes:
        print(f"{'shape':<28}{'fwd lax/ours':>15}{'dx lax/ours':>15}{'dW lax/ours':>17}{'dW x':>7}"
              f"{'vjp lax/ours':>17}{'vjp x':>7}{'dW err':>9}")
        for label, *shape in SHAPES:
            if args.only and not any(s in label for s in args.only):
                continue
            t, err = time_shape(*shape, args.repeats)

            def pair(part, t=t):
                return f"{t[part + ' lax']:.1f}/{t[part + ' ours']:.1f}"

            print(f"{label:<28}{pair('fwd'):>15}{pair('dx'):>15}{pair('dW'):>17}"
                  f"{t['dW lax'] / t['dW ours']:>6.2f}x{pair('vjp'):>17}{t['vjp lax'] / t['vjp ours']:>6.2f}x"
                  f"{err['dW']:>9.1e}", flush=True)
        print(_load(), flush=True)
    if not args.no_generator:
        for variant in args.variants:
            t = time_generator(variant, args.step_repeats)
            print(f"{variant} ({args.method}): forward lax {t['forward lax']:.0f} ms / ours {t['forward ours']:.0f} ms; L1 step lax "
                  f"{t['l1 step lax']:.0f} ms / ours {t['l1 step ours']:.0f} ms "
                  f"({t['l1 step lax'] / t['l1 step ours']:.2f}x); |loss diff| {t['loss diff']:.1e}, worst grad "
                  f"rel diff {t['worst grad rel diff']:.1e}; {_load()}", flush=True)


if __name__ == "__main__":
    main()
