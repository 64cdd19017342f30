"""The MetaPortrait base generator (`OcclusionAwareSPADEGenerator`): warp stage, then ID-preserving refinement."""

import copy
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from metaportrait_jax.models.dense_motion import DenseMotionNetwork
from metaportrait_jax.models.hourglass import Hourglass
from metaportrait_jax.models.ladder import LadderEncoder
from metaportrait_jax.models.layers import Conv
from metaportrait_jax.models.spade import SpadeGenerator
from metaportrait_jax.ops.landmark_maps import gaze_heatmaps
from metaportrait_jax.ops.resize import resize_bilinear
from metaportrait_jax.ops.warp import deformation_from_flow, warp_with_flow

STAGES = ("warp", "full")
BATCH_KEYS = ("source", "source_line", "driving_line", "mouth_mask", "driving_gaze", "source_id")
WARP_SUBNETWORKS = ("ladder_network", "dense_motion_network")
REFINE_SUBNETWORKS = ("feature_encoder", "fuse_high_res", "SPDAE_G")


def dummy_batch(config: ml_collections.ConfigDict, batch_size: int = 1) -> dict[str, jax.Array]:
    """Zeros with the generator's input shapes (for init and shape evaluation)."""
    s = config.image_size
    return {
        "source": jnp.zeros((batch_size, s, s, 3)),
        "source_line": jnp.zeros((batch_size, s, s, 3)),
        "driving_line": jnp.zeros((batch_size, s, s, 3)),
        "mouth_mask": jnp.zeros((batch_size, s, s, 1)),
        "driving_gaze": jnp.zeros((batch_size, config.num_gaze, 2)),
        "source_id": jnp.zeros((batch_size, config.id_dim)),
    }


class Generator(nn.Module):
    """Animates `source` with the motion of the driving landmarks.

    batch (NHWC float32): `source` [B,H,W,3] in [0,1]; `source_line`, `driving_line` [B,H,W,3]; `mouth_mask`
    [B,H,W,1]; `driving_gaze` [B,G,2] in [-1,1]; `source_id` [B,id_dim].
    Returns `deformed` [B,H,W,3], `deformation` and `flow` [B,h,w,2], `occlusion_map` [B,H,W,1] and, for
    stage='full', `prediction` [B,H,W,3]. `train=True` steps spectral norm's power iteration (mutable 'spectral').
    """

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, batch: Mapping[str, jax.Array], *, stage: str = "full",
                 train: bool = False) -> dict[str, jax.Array]:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise ValueError(f"generator batch is missing {missing}")
        c = self.config
        source = batch["source"]
        motion_input = jnp.concatenate([source, batch["source_line"], batch["driving_line"]], axis=-1)
        code = LadderEncoder(c, name="ladder_network")(motion_input, train)
        flow, occlusion = DenseMotionNetwork(c, name="dense_motion_network")(motion_input, code)
        out = {
            "flow": flow,
            "deformation": deformation_from_flow(flow, c.grid_convention),
            "occlusion_map": occlusion,
            "deformed": warp_with_flow(source, flow, c.grid_convention),
        }
        if stage == "warp":
            return out
        out["prediction"] = self._refine(batch, flow, occlusion, train)
        return out

    def _refine(self, batch, flow, occlusion, train):
        c = self.config
        fe = c.feature_encoder
        features = Hourglass(fe.block_expansion, fe.max_features, fe.num_blocks, name="feature_encoder")(
            batch["source"])
        features[-1] = Conv(fe.fuse_channels, 3, name="fuse_high_res")(features[-1])
        lines = jnp.concatenate([batch["source_line"], batch["driving_line"]], axis=-1)
        mouth_line = batch["driving_line"] * batch["mouth_mask"]
        full_lines, full_mouth = lines, mouth_line
        levels = []
        for feature in features:
            size = feature.shape[1:3]
            if c.line_resize_chain:
                # Official quirk: the line images are overwritten in place, so each level resizes the previous one.
                lines, mouth_line = resize_bilinear(lines, size), resize_bilinear(mouth_line, size)
            else:
                lines, mouth_line = resize_bilinear(full_lines, size), resize_bilinear(full_mouth, size)
            levels.append(jnp.concatenate([
                warp_with_flow(feature, flow, c.grid_convention),
                resize_bilinear(occlusion, size),
                gaze_heatmaps(batch["driving_gaze"], size[0], size[1], c.gaze_variance),
                lines,
                mouth_line,
            ], axis=-1))
        x = SpadeGenerator(c, name="SPDAE_G")(levels, batch["source_id"], train)
        if c.output_activation == "tanh":
            return jnp.tanh(x)
        if c.output_activation == "sigmoid":
            return nn.sigmoid(x)
        raise ValueError(f"model.output_activation must be 'tanh' or 'sigmoid', got {c.output_activation!r}")


_FORWARDS: dict[str, Callable] = {}


def generator_forward(model_config: ml_collections.ConfigDict) -> Callable:
    """The jitted eval-mode forward `(variables, batch) -> outputs` for a model config; the same function (and so
    its compiled executables) for equal configs within a process, so repeated runs compile once."""
    key = model_config.to_json_best_effort(sort_keys=True)
    if key not in _FORWARDS:
        frozen = copy.deepcopy(model_config)  # later edits of the caller's config must not reach the cached function
        _FORWARDS[key] = jax.jit(lambda v, b: Generator(frozen).apply(v, b))
    return _FORWARDS[key]
