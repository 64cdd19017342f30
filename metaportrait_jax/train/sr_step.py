"""The temporal SR training step (spec `temporal_sr_model.md` §5): one pure `step(state, batch) -> (state, metrics)`.

- loss: 0.1·L1 + VGG perceptual (pre-ReLU taps, layer weights 0.1, 0.1, 1, 1, 1, L1) + 50·Gram style loss (same
  taps and weights), target features held constant; the VGG sees (x + 1)/2 of [0, 1] images (`loss.range_norm`,
  the official quirk); no GAN, identity or temporal loss;
- Adam(0.9, 0.99), lr 1e-4 with cosine decay to 1e-7 over `train.steps`; the StyleGAN2 decoder is frozen by an optax
  mask (and its weights get no gradient computed at all) unless `train.freeze_decoder` is off (only sensible without
  pretrained GFPGAN weights); EMA of the weights (decay 0.999);
- augmentation: a whole clip is flipped horizontally with probability 0.5 (inputs and targets alike), drawn from the
  step number, so a resumed run repeats it;
- a step whose loss is not finite changes nothing but the `skipped` counter (as the base trainer).

Batches: `inputs [B, T, h, w, 3]` and `targets [B, T, 2h, 2w, 3]`, both in [0, 1].
"""

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from metaportrait_jax.models.temporal_sr import TemporalSR, dummy_clip
from metaportrait_jax.train.sharding import jit_step

FROZEN = "frozen"
DECODER = "stylegan_decoder"


@flax.struct.dataclass
class SRTrainState:
    step: jax.Array              # int32 scalar
    params: dict[str, Any]       # the network's `params`
    opt_state: Any
    ema: dict[str, Any]          # exponential moving average of `params`
    perceptual: dict[str, Any]   # frozen feature-network variables
    skipped: jax.Array           # int32: steps whose loss was not finite


def gram(features: jax.Array) -> jax.Array:
    """`[N, H, W, C] -> [N, C, C]`: F Fᵀ / (C·H·W) per image."""
    n, h, w, c = features.shape
    flat = features.reshape(n, h * w, c)
    return jnp.einsum("npc,npd->ncd", flat, flat) / (c * h * w)


def learning_rate(train: ml_collections.ConfigDict) -> optax.Schedule:
    ratio = train.final_learning_rate / train.learning_rate if train.learning_rate else 1.0  # lr 0: frozen
    return optax.cosine_decay_schedule(train.learning_rate, train.steps, alpha=ratio)


def parameter_labels(params: dict[str, Any], frozen: tuple[str, ...]) -> dict[str, Any]:
    """Label tree for optax: 'frozen' for the top-level modules in `frozen`, 'trained' for everything else."""
    return {name: jax.tree.map(lambda _: FROZEN if name in frozen else "trained", sub) for name, sub in params.items()}


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam on everything but the decoder, which the mask freezes (unless `train.freeze_decoder` is off)."""
    b1, b2 = train.adam_betas
    frozen = (DECODER,) if train.freeze_decoder else ()
    return optax.multi_transform({"trained": optax.adam(learning_rate(train), b1=b1, b2=b2),
                                  FROZEN: optax.set_to_zero()}, lambda params: parameter_labels(params, frozen))


class SRTrainer:
    """Initial state and step of temporal SR training for a config (`config.model`, `config.train`); trained by
    `train.loop.run` like the base model's `Trainer`."""

    description = "train temporal SR"
    progress_metric = "loss"
    image_tag = "input_target_prediction"

    def __init__(self, config: ml_collections.ConfigDict, perceptual_network: nn.Module):
        self.config, self.train = config, config.train
        self.network = TemporalSR(config.model)
        self.perceptual_network = perceptual_network
        self.compute_dtype = jnp.dtype(self.train.compute_dtype)
        self.tx = make_optimizer(self.train)

    def init_state(self, rng: jax.Array, perceptual: dict[str, Any]) -> SRTrainState:
        params = self.network.init(rng, dummy_clip(self.config.model))["params"]
        return SRTrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
                            ema=params, perceptual=dict(perceptual), skipped=jnp.zeros((), jnp.int32))

    def _features(self, perceptual: dict[str, Any], images: jax.Array) -> list[jax.Array]:
        if self.train.loss.range_norm:
            images = (images + 1) / 2
        cast = jax.tree.map(lambda x: x.astype(self.compute_dtype), perceptual)
        return [f.astype(jnp.float32) for f in self.perceptual_network.apply(cast, images.astype(self.compute_dtype))]

    def forward(self, params: dict[str, Any], inputs: jax.Array) -> jax.Array:
        """The network on `inputs [B, T, h, w, 3]` in the compute dtype; float32 `[B, T, 2h, 2w, 3]`."""
        cast = jax.tree.map(lambda x: x.astype(self.compute_dtype), params)
        return self.network.apply({"params": cast}, inputs.astype(self.compute_dtype)).astype(jnp.float32)

    def losses(self, params: dict[str, Any], state: SRTrainState, batch: dict[str, jax.Array]
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
        w = self.train.loss
        if self.train.freeze_decoder:  # its weights are constants here, so no gradient is computed for them
            params = {k: jax.lax.stop_gradient(v) if k == DECODER else v for k, v in params.items()}
        prediction = self.forward(params, batch["inputs"])
        target = batch["targets"]
        images = prediction.reshape(-1, *prediction.shape[2:])
        target_images = target.reshape(images.shape)
        predicted_features = self._features(state.perceptual, images)
        target_features = jax.lax.stop_gradient(self._features(state.perceptual, target_images))
        if len(predicted_features) != len(w.layer_weights):
            raise ValueError(f"loss.layer_weights: got {len(w.layer_weights)}, the feature network taps "
                             f"{len(predicted_features)}")
        perceptual = style = jnp.zeros((), jnp.float32)
        for weight, p, t in zip(w.layer_weights, predicted_features, target_features):
            perceptual = perceptual + weight * jnp.mean(jnp.abs(p - t))
            style = style + weight * jnp.mean(jnp.abs(gram(p) - gram(t)))
        named = {"pixel": w.pixel * jnp.mean(jnp.abs(prediction - target)), "perceptual": w.perceptual * perceptual,
                 "style": w.style * style}
        return sum(named.values()), named

    def augment(self, step: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Flips each clip horizontally with probability `train.flip_probability` (drawn from the step)."""
        key = jax.random.fold_in(jax.random.key(self.config.seed), step)
        flip = jax.random.bernoulli(key, self.train.flip_probability, (batch["inputs"].shape[0],))

        def maybe_flip(x):
            return jnp.where(flip[:, None, None, None, None], x[:, :, :, ::-1], x)

        return {"inputs": maybe_flip(batch["inputs"]), "targets": maybe_flip(batch["targets"])}

    def step(self, state: SRTrainState, batch: dict[str, jax.Array]) -> tuple[SRTrainState, dict[str, jax.Array]]:
        """One Adam update, then the EMA; pure, jit it with the loop's shardings."""
        batch = self.augment(state.step, batch)
        (loss, named), grads = jax.value_and_grad(self.losses, has_aux=True)(state.params, state, batch)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = self.train.ema_decay
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema, params)
        finite = jnp.isfinite(loss)
        candidate = state.replace(params=params, opt_state=opt_state, ema=ema)
        # A non-finite loss would poison Adam's moments: keep the old state and count the skip.
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), candidate, state)
        new_state = new_state.replace(step=state.step + 1, skipped=state.skipped + (~finite).astype(jnp.int32))
        metrics = {**named, "loss": loss, "grad_norm": optax.tree.norm(grads), "skipped": new_state.skipped,
                   "finite": finite.astype(jnp.float32), "learning_rate": learning_rate(self.train)(state.step)}
        return new_state, metrics

    def merge(self, state: SRTrainState, stored: dict[str, Any]) -> SRTrainState:
        """`state` with the weights of `stored` (the `init_from` temporal SR model, e.g. GFPGAN v1.3 converted by
        `convert official-sr`, as the official training loads GFPGAN's); the EMA starts equal to them."""
        params = jax.tree.map(lambda fresh, loaded: jnp.asarray(loaded, fresh.dtype), state.params, stored["params"])
        # The EMA starts equal but in buffers of its own: the step donates both trees.
        return state.replace(params=params, ema=jax.tree.map(jnp.copy, params))

    def compile_step(self, state_sharding=None, batch_sharding=None, metrics_sharding=None) -> Callable:
        """The step as one program, state donated (shardings as `jit_step`'s)."""
        return jit_step(self.step, state_sharding, batch_sharding, metrics_sharding)

    def exports(self, state: SRTrainState) -> dict[str, tuple[dict[str, Any], None]]:
        """{"": the trained weights (what the official inference uses), "_ema": their moving average}."""
        return {"": ({"params": state.params}, None), "_ema": ({"params": state.ema}, None)}

    def preview(self, state: SRTrainState, batch: dict[str, jax.Array]) -> tuple[dict, dict]:
        """The first clip's frames: (its inputs and targets, the EMA network's prediction) for image grids."""
        shown = {"inputs": batch["inputs"][:1], "targets": batch["targets"][:1]}
        return shown, {"prediction": self.forward(state.ema, shown["inputs"])}

    @staticmethod
    def image_grid(shown: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> np.ndarray:
        """`[T·H, 3·W, 3]` uint8: input (nearest-upsampled) | target | prediction, one frame of the clip per row."""
        inputs, targets = shown["inputs"][0], shown["targets"][0]
        factor = targets.shape[1] // inputs.shape[1]
        inputs = np.repeat(np.repeat(inputs, factor, axis=1), factor, axis=2)
        grid = np.concatenate([np.concatenate([inputs[t], targets[t], outputs["prediction"][0][t]], axis=1)
                               for t in range(len(inputs))], axis=0)
        return (np.clip(grid, 0, 1) * 255).astype(np.uint8)
