"""DenseMotionNetworkReg: an AdaIN(motion code) hourglass regressing a dense flow and an occlusion map."""

import flax.linen as nn
import jax
import ml_collections

from metaportrait_jax.models.hourglass import Hourglass
from metaportrait_jax.models.layers import Conv, LayerNorm2d
from metaportrait_jax.ops.resize import resize_bilinear
from metaportrait_jax.ops.warp import pixel_flow_to_normalized


class DenseMotionNetwork(nn.Module):
    """`[B, H, W, 9]` input and `[B, z]` code -> flow `[B, h, w, 2]` (normalised units) and occlusion `[B, H, W, 1]`.

    h = H / 2^dec_lease (64 at 256). The occlusion map only conditions the refine network; it never masks features.
    """

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x: jax.Array, code: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = self.config.dense_motion
        features = Hourglass(c.block_expansion, c.max_features, c.num_blocks, c.dec_lease, c.adain_hidden,
                             same_blocks=True, name="hourglass")(x, code)[-1]
        k = c.head_kernel
        flow_px = Conv(2, k, name="reger_2")(nn.leaky_relu(LayerNorm2d(name="reger_0")(features), 0.1))
        flow = pixel_flow_to_normalized(flow_px, self.config.grid_convention)
        occlusion = Conv(1, k, name="occlusion_net_2")(nn.leaky_relu(LayerNorm2d(name="occlusion_net_0")(features), 0.1))
        occlusion = resize_bilinear(nn.sigmoid(occlusion), x.shape[1:3])
        return flow, occlusion
