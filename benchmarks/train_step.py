"""Training-step time of the generator at `tiny` and `official_256` (batch 1) and the share of the conv weight gradient.

  python benchmarks/train_step.py                           # both presets
  python benchmarks/train_step.py --variants tiny --repeats 5

Rows per preset:
  forward           generator forward (full stage, train mode)
  l1 step           forward + backward of an L1 loss + Adam update: what the official 7.4 s/step figure measures
  l1 step, no dW    the same with every conv kernel held constant (input gradients only): the gap to `l1 step` is
                    the time XLA:CPU spends on convolution weight gradients
  trainer step      our full-stage training step (perceptual VGG pyramid, eye/mouth, LSGAN + D step)
Measure on an idle machine; other load makes the numbers worthless.
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from metaportrait_jax.config import REPO_CONFIGS, load_config
from metaportrait_jax.convert.vgg import perceptual_features
from metaportrait_jax.models.generator import BATCH_KEYS, Generator, dummy_batch
from metaportrait_jax.train.step import Trainer


def _median_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _split_kernels(params):
    flat = traverse_util.flatten_dict(params)
    kernels = {k: v for k, v in flat.items() if k[-1] == "kernel" and v.ndim == 4}
    others = {k: v for k, v in flat.items() if k not in kernels}
    return kernels, others


def measure(variant: str, repeats: int) -> dict[str, float]:
    config = load_config(os.path.join(REPO_CONFIGS, f"pretrain_full.py:{variant}"))
    model = Generator(config.model)
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.uniform(size=v.shape), jnp.float32) for k, v in dummy_batch(config.model).items()}
    target = jnp.asarray(rng.uniform(size=batch["source"].shape), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0), batch)
    spectral = {k: v for k, v in variables.items() if k != "params"}
    optimizer = optax.adam(2e-4, b1=0.5, b2=0.999)

    def l1(params):
        out, _ = model.apply({**spectral, "params": params}, batch, train=True, mutable=["spectral"])
        return jnp.mean(jnp.abs(out["prediction"] - target))

    @jax.jit
    def forward(params):
        return model.apply({**spectral, "params": params}, batch, train=True, mutable=["spectral"])[0]["prediction"]

    @jax.jit
    def l1_step(params, opt_state):
        loss, grads = jax.value_and_grad(l1)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    kernels, others = _split_kernels(variables["params"])

    @jax.jit
    def l1_step_without_weight_grads(others, opt_state):
        def loss(o):
            return l1(traverse_util.unflatten_dict({**kernels, **o}))

        value, grads = jax.value_and_grad(loss)(others)
        updates, opt_state = optimizer.update(grads, opt_state, others)
        return optax.apply_updates(others, updates), opt_state, value

    params = variables["params"]
    results = {
        "forward": _median_seconds(forward, params, repeats=repeats),
        "l1 step": _median_seconds(l1_step, params, optimizer.init(params), repeats=repeats),
        "l1 step, no dW": _median_seconds(l1_step_without_weight_grads, others, optimizer.init(others),
                                          repeats=repeats),
    }
    network, vgg = perceptual_features(config.train.perceptual)
    trainer = Trainer(config, network)
    state = trainer.init_state(jax.random.key(0), {"params": vgg})
    full_batch = {**{k: batch[k] for k in BATCH_KEYS}, "driving": target,
                  "eye_mask": jnp.ones_like(batch["mouth_mask"]), "mouth_mask": batch["mouth_mask"]}
    step = jax.jit(trainer.step)  # the whole new state is an output, so nothing is pruned away
    results["trainer step"] = _median_seconds(step, state, full_batch, repeats=repeats)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=["tiny", "official_256"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}; batch 1, fp32, seconds")
    for variant in args.variants:
        r = measure(variant, args.repeats)
        weight_share = (r["l1 step"] - r["l1 step, no dW"]) / r["l1 step"]
        print(f"{variant}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items())
              + f"; l1 step / forward {r['l1 step'] / r['forward']:.1f}x; conv weight gradients ≈ "
              f"{100 * weight_share:.0f}% of the l1 step", flush=True)


if __name__ == "__main__":
    main()
