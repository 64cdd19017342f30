"""The pretraining step for the warp and full stages: one pure function `step(state, batch) -> (state, metrics)`.

What the official trainer does, and where we differ (spec §3):
- Adam(0.5, 0.999), lr 2e-4, warping network (ladder + dense motion) at ×0.1; step decay ×0.1 at `decay_steps`;
- gradients: nan → 0, ±inf → ±1e5, then global-norm clip 0.3 — applied to the generator's and the
  discriminator's *own* gradients separately (the official G clip also counts D's gradients from the G losses);
- warp stage: only the perceptual loss of the warped source; the refine network is frozen;
- full stage: warp perceptual + perceptual + eye + mouth + LSGAN + feature matching; then the D step (LSGAN) on the
  same prediction; optionally an identity loss through any pluggable face encoder (off by default: the official
  one is commented out and its encoder is private);
- a step whose loss is not finite changes nothing but the `skipped` counter;
- `compute_dtype='bfloat16'` runs the networks in bf16 with fp32 parameters, optimiser and losses (the official
  fp16 autocast needs a loss scaler; bf16 does not); `'float64'` (with `JAX_ENABLE_X64`, parameters cast to float64
  by the caller) runs networks and losses in float64, for checks that float32 round-off would blur.
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

from metaportrait_jax import losses as L
from metaportrait_jax.config import ConfigError
from metaportrait_jax.models.discriminator import Discriminator
from metaportrait_jax.models.generator import (BATCH_KEYS, REFINE_SUBNETWORKS, WARP_SUBNETWORKS, Generator,
                                               dummy_batch)
from metaportrait_jax.train.sharding import GRADIENT_REDUCTIONS, batch_devices, gathered, jit_step, per_device

WARP_MODULES = WARP_SUBNETWORKS
STAGES = ("warp", "full")
COMPUTE_DTYPES = ("float32", "bfloat16", "float64")
GRADIENT_LIMIT = 1e5  # official nan_to_num(posinf=1e5, neginf=-1e5)


@flax.struct.dataclass
class TrainState:
    step: jax.Array                 # int32 scalar
    generator: dict[str, Any]       # {"params": ..., "spectral": ...}
    discriminator: dict[str, Any]   # {"params": ...}
    generator_opt: Any
    discriminator_opt: Any
    perceptual: dict[str, Any]      # frozen feature-network variables
    skipped: jax.Array              # int32: steps whose loss was not finite
    identity: dict[str, Any] = flax.struct.field(default_factory=dict)  # frozen identity-encoder variables


def finite_gradients(limit: float = GRADIENT_LIMIT) -> optax.GradientTransformation:
    """nan → 0, ±inf → ±limit (the official `nan_to_num` before clipping)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=limit, neginf=-limit), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def learning_rate(base: float, decay_steps: tuple[int, ...], factor: float = 0.1) -> optax.Schedule:
    return optax.piecewise_constant_schedule(base, {int(s): factor for s in decay_steps})


def generator_groups(params: dict[str, Any], stage: str) -> dict[str, Any]:
    """Label tree: 'warp' for the warping network, 'refine' (or 'frozen' in the warp stage) for the rest."""
    refine = "frozen" if stage == "warp" else "refine"
    return {name: jax.tree.map(lambda _: "warp" if name in WARP_MODULES else refine, sub)
            for name, sub in params.items()}


def make_optimizers(train: ml_collections.ConfigDict, stage: str, generator_params: dict[str, Any]
                    ) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """(generator, discriminator) optimisers: finite gradients → clip → Adam per parameter group."""
    b1, b2 = train.adam_betas

    def adam(scale: float) -> optax.GradientTransformation:
        # eps_root > 0 keeps Adam differentiable at zero gradients (second-order MAML through an Adam inner loop)
        return optax.adam(learning_rate(train.learning_rate * scale, train.decay_steps), b1=b1, b2=b2,
                          eps_root=train.adam_eps_root)

    groups = {"warp": adam(train.warp_lr_scale), "refine": adam(1.0), "frozen": optax.set_to_zero()}
    used = set(jax.tree.leaves(generator_groups(generator_params, stage)))
    generator = optax.chain(finite_gradients(), optax.clip_by_global_norm(train.clip_norm),
                            optax.multi_transform({k: v for k, v in groups.items() if k in used},
                                                  lambda p: generator_groups(p, stage)))
    discriminator = optax.chain(finite_gradients(), optax.clip_by_global_norm(train.clip_norm), adam(1.0))
    return generator, discriminator


def cast_floating(tree: Any, dtype) -> Any:
    """`tree` with its floating-point leaves cast to `dtype` (other leaves, e.g. step counters, unchanged)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def check_train_config(train: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` naming the first `train.*` choice that is not one of its options."""
    if train.stage not in STAGES:
        raise ConfigError(f"train.stage must be one of {STAGES}, got {train.stage!r}")
    if train.gradient_reduction not in GRADIENT_REDUCTIONS:
        raise ConfigError(f"train.gradient_reduction must be one of {GRADIENT_REDUCTIONS}, "
                          f"got {train.gradient_reduction!r}")
    if train.compute_dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"train.compute_dtype must be one of {COMPUTE_DTYPES}, got {train.compute_dtype!r}")
    if train.compute_dtype == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError("train.compute_dtype='float64' needs JAX_ENABLE_X64=1 (else JAX computes in float32)")


class Trainer:
    """Builds the initial state and the step of one stage for a config (`config.model`, `config.train`)."""

    def __init__(self, config: ml_collections.ConfigDict, perceptual_network: nn.Module,
                 identity_encoder: nn.Module | None = None):
        """`identity_encoder` maps `[B, H, W, 3]` images in [0, 1] to `[B, model.id_dim]` embeddings; it is required
        when `train.loss.identity` > 0."""
        self.config, self.train = config, config.train
        if self.train.loss.identity > 0 and identity_encoder is None:
            raise ValueError("train.loss.identity > 0 needs an identity encoder (train.identity_encoder)")
        self.identity_encoder = identity_encoder
        check_train_config(self.train)
        unknown = set(config.get("init_modules", ())) - set(WARP_SUBNETWORKS + REFINE_SUBNETWORKS)
        if unknown:
            raise ConfigError(f"init_modules: {sorted(unknown)} are not generator modules (those are "
                              f"{WARP_SUBNETWORKS + REFINE_SUBNETWORKS})")
        self.stage = self.train.stage
        self.fixed_order = self.train.gradient_reduction == "fixed_order"
        self.description = f"train {self.stage}"
        self.generator = Generator(config.model)
        self.discriminator = Discriminator(config.model)
        self.perceptual_network = perceptual_network
        self.compute_dtype = jnp.dtype(self.train.compute_dtype)
        self.loss_dtype = jnp.promote_types(self.compute_dtype, jnp.float32)
        self.use_gan = self.stage == "full" and self.train.loss.generator_gan > 0
        abstract = jax.eval_shape(self.init_models, jax.random.key(0))
        self.generator_tx, self.discriminator_tx = make_optimizers(self.train, self.stage,
                                                                   abstract[0]["params"])

    def init_models(self, rng: jax.Array, generator: dict[str, Any] | None = None):
        """(generator, discriminator) variables: random ones, or the given generator's (not initialised at all,
        which matters outside `jit`, where nothing unused is pruned)."""
        g_rng, d_rng = jax.random.split(rng)
        size = self.config.model.image_size
        if generator is None:
            generator = self.generator.init(g_rng, dummy_batch(self.config.model))
        discriminator = self.discriminator.init(d_rng, jnp.zeros((1, size, size, 3)))
        return dict(generator), dict(discriminator)

    progress_metric = "generator_loss"

    def init_state(self, rng: jax.Array, perceptual: dict[str, Any], identity: dict[str, Any] | None = None,
                   generator: dict[str, Any] | None = None) -> TrainState:
        """A fresh state; `generator` variables (e.g. a checkpoint's) replace the random generator if given. Its
        floating-point arrays are float32, or float64 with `train.compute_dtype='float64'` (exactness checks)."""
        generator, discriminator = self.init_models(rng, generator)
        state = TrainState(step=jnp.zeros((), jnp.int32), generator=generator, discriminator=discriminator,
                           generator_opt=self.generator_tx.init(generator["params"]),
                           discriminator_opt=self.discriminator_tx.init(discriminator["params"]),
                           perceptual=dict(perceptual), skipped=jnp.zeros((), jnp.int32),
                           identity=dict(identity or {}))
        return cast_floating(state, self.loss_dtype)

    def _features(self, perceptual: dict[str, Any]) -> Callable[[jax.Array], list[jax.Array]]:
        def features(images: jax.Array) -> list[jax.Array]:
            out = self.perceptual_network.apply(cast_floating(perceptual, self.compute_dtype),
                                                images.astype(self.compute_dtype))
            return [f.astype(self.loss_dtype) for f in out]

        return features

    def _discriminate(self, params: dict[str, Any], images: jax.Array):
        features, logits = self.discriminator.apply({"params": cast_floating(params, self.compute_dtype)},
                                                    images.astype(self.compute_dtype))
        return [f.astype(self.loss_dtype) for f in features], logits.astype(self.loss_dtype)

    def generator_losses(self, params, state: TrainState, batch: dict[str, jax.Array],
                         mask_denominators: dict[str, jax.Array] | None = None):
        """(total, (named losses, generator outputs, new spectral-norm vectors)). `mask_denominators`: the eye/mouth
        losses' denominators per mask (`losses.masked_box_loss`) when `batch` is a share of the batch they are for."""
        mask_denominators = mask_denominators or {}
        w = self.train.loss
        inputs = cast_floating({k: batch[k] for k in BATCH_KEYS}, self.compute_dtype)
        variables = {**state.generator, "params": cast_floating(params, self.compute_dtype)}
        out, mutated = self.generator.apply(variables, inputs, stage=self.stage, train=True, mutable=["spectral"])
        out = cast_floating(out, self.loss_dtype)
        features = self._features(state.perceptual)
        driving, scales = batch["driving"], tuple(self.train.pyramid_scales)
        named = {"warp_perceptual": L.perceptual_loss(features, out["deformed"], driving, scales, w.warp_perceptual)}
        if self.stage == "full":
            prediction = out["prediction"]
            named["perceptual"] = L.perceptual_loss(features, prediction, driving, scales, w.perceptual)
            if w.eye:
                named["eye"] = L.masked_box_loss(prediction, driving, batch["eye_mask"], scales, w.eye,
                                                 mask_denominators.get("eye_mask"))
            if w.mouth:
                named["mouth"] = L.masked_box_loss(prediction, driving, batch["mouth_mask"], scales, w.mouth,
                                                   mask_denominators.get("mouth_mask"))
            if w.identity:
                embedding = self.identity_encoder.apply(cast_floating(state.identity, self.compute_dtype),
                                                        prediction.astype(self.compute_dtype))
                named["identity"] = w.identity * L.identity_loss(embedding.astype(self.loss_dtype), batch["source_id"])
            if self.use_gan:
                d_params = state.discriminator["params"]
                real_features, _ = self._discriminate(d_params, driving)
                fake_features, fake_logits = self._discriminate(d_params, prediction)
                named["generator_gan"] = w.generator_gan * L.generator_gan_loss(fake_logits)
                named["feature_matching"] = L.feature_matching_loss(real_features, fake_features, w.feature_matching)
        return L.sum_losses(named), (named, out, mutated)

    def discriminator_loss(self, params, prediction: jax.Array, driving: jax.Array) -> jax.Array:
        _, real_logits = self._discriminate(params, driving)
        _, fake_logits = self._discriminate(params, jax.lax.stop_gradient(prediction))
        return self.train.loss.discriminator_gan * L.discriminator_gan_loss(real_logits, fake_logits)

    def _generator_gradients(self, params, state: TrainState, batch: dict[str, jax.Array]):
        """((total, (named losses, outputs, spectral vectors)), gradients) of `generator_losses`."""
        value_and_grad = jax.value_and_grad(self.generator_losses, has_aux=True)
        if not self.fixed_order:
            return value_and_grad(params, state, batch)
        # The eye/mouth losses divide by the whole batch's mask pixels (exact sums of 0/1), /D so that the mean of
        # the D per-device losses is the whole batch's loss, as with every per-example mean.
        scales = tuple(self.train.pyramid_scales)
        denominators = {key: L.mask_denominators(gathered(batch[key]), scales) / batch_devices()
                        for key in ("eye_mask", "mouth_mask") if key in batch}

        def on_device(shared, rows):
            (loss, (named, out, mutated)), grads = value_and_grad(*shared, rows, denominators)
            return (loss, named, grads), out, mutated  # spectral vectors: from the weights alone, alike

        (loss, named, grads), out, mutated = per_device(on_device, (params, state), batch, fixed_order=True)
        return (loss, (named, out, mutated)), grads

    def _discriminator_gradients(self, params, prediction: jax.Array, driving: jax.Array):
        value_and_grad = jax.value_and_grad(self.discriminator_loss)
        if not self.fixed_order:
            return value_and_grad(params, prediction, driving)
        return per_device(lambda p, rows: (value_and_grad(p, *rows), (), ()), params, (prediction, driving),
                          fixed_order=True)[0]

    def step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        """One G update (and one D update in the full stage with GAN); pure, jit it with `shardings` under
        `jax.set_mesh` (which `train.gradient_reduction='fixed_order'` needs to find the devices)."""
        g_params = state.generator["params"]
        (g_loss, (named, out, mutated)), g_grads = self._generator_gradients(g_params, state, batch)
        g_updates, g_opt = self.generator_tx.update(g_grads, state.generator_opt, g_params)
        candidate = state.replace(
            step=state.step + 1,
            generator={**state.generator, **mutated, "params": optax.apply_updates(g_params, g_updates)},
            generator_opt=g_opt)
        metrics = {**named, "generator_loss": g_loss, "generator_grad_norm": optax.tree.norm(g_grads)}
        finite = jnp.isfinite(g_loss)
        if self.use_gan:
            d_params = state.discriminator["params"]
            d_loss, d_grads = self._discriminator_gradients(d_params, out["prediction"], batch["driving"])
            d_updates, d_opt = self.discriminator_tx.update(d_grads, state.discriminator_opt, d_params)
            candidate = candidate.replace(discriminator={"params": optax.apply_updates(d_params, d_updates)},
                                          discriminator_opt=d_opt)
            metrics.update(discriminator_loss=d_loss, discriminator_grad_norm=optax.tree.norm(d_grads))
            finite &= jnp.isfinite(d_loss)
        # A non-finite loss would poison Adam's moments: keep the old state and count the skip.
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), candidate, state)
        new_state = new_state.replace(step=state.step + 1, skipped=state.skipped + (~finite).astype(jnp.int32))
        metrics.update(skipped=new_state.skipped, finite=finite.astype(jnp.float32),
                       learning_rate=learning_rate(self.train.learning_rate, self.train.decay_steps)(state.step))
        return new_state, metrics

    def predict(self, state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Generator outputs in eval mode (for image grids)."""
        return self.generator.apply(state.generator, {k: batch[k] for k in BATCH_KEYS}, stage=self.stage)

    def preview(self, state: TrainState, batch: dict[str, jax.Array], rows: int = 4
                ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """(the first `rows` examples of `batch`, the generator's outputs on them): an image grid's content."""
        shown = {k: batch[k][:rows] for k in ("source", "driving", *BATCH_KEYS)}
        return shown, self.predict(state, shown)

    def compile_step(self, state_sharding=None, batch_sharding=None, metrics_sharding=None) -> Callable:
        """The step as one program, state donated (shardings as `jit_step`'s)."""
        return jit_step(self.step, state_sharding, batch_sharding, metrics_sharding)

    def merge(self, state: TrainState, stored: dict[str, Any]) -> TrainState:
        """`state` with the generator modules `config.init_modules` taken from `stored` (the `init_from` model's
        variables; official Full stage: the ladder and dense-motion networks), in the state's dtype."""
        generator = dict(state.generator)
        for collection in generator:
            merged = dict(generator[collection])
            merged.update({name: jax.tree.map(lambda x: jnp.asarray(x, self.loss_dtype), module)
                           for name, module in stored.get(collection, {}).items()
                           if name in self.config.init_modules})
            generator[collection] = merged
        return state.replace(generator=generator)

    image_tag = "source_driving_warped_prediction"

    @staticmethod
    def image_grid(shown: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> np.ndarray:
        """`[rows·H, 4·W, 3]` uint8: source | driving | warped source | prediction (if any), one example per row."""
        columns = [shown["source"], shown["driving"], outputs["deformed"]]
        if "prediction" in outputs:
            columns.append(outputs["prediction"])
        grid = np.concatenate([np.concatenate([np.asarray(c[r]) for c in columns], axis=1)
                               for r in range(len(shown["source"]))], axis=0)
        return (np.clip(grid, 0, 1) * 255).astype(np.uint8)

    def exports(self, state: TrainState) -> dict[str, tuple[dict[str, Any], dict[str, Any] | None]]:
        """{export directory suffix: (generator variables, discriminator variables or None)}: the generator, with
        its discriminator when it was trained adversarially."""
        return {"": (state.generator, state.discriminator if self.use_gan else None)}
