"""Frozen VGG feature extractors for the perceptual loss (torchvision layout, NHWC).

Parameter paths follow torchvision's `features.<index>` keys (`features_<index>/kernel`), so weights convert by name.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Layer plans of torchvision's `features`: a number is a 3x3 conv (+ReLU), 'M' a 2x2 max pool.
VGG_PLANS = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512),
}
# ReLU outputs tapped by the losses, as torchvision `features` indices of the ReLU.
# vgg19: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (the official perceptual loss).
# vgg16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (the LPIPS layers).
VGG_TAPS = {"vgg19": (1, 6, 11, 20, 29), "vgg16": (3, 8, 15, 22, 29)}
# Conv outputs before their ReLU, as torchvision `features` indices of the conv (the temporal SR losses):
# vgg19: conv1_2, conv2_2, conv3_4, conv4_4, conv5_4 (official); vgg16: conv1_2, conv2_2, conv3_3, conv4_3, conv5_3.
PRE_RELU_TAPS = {"vgg19": (2, 7, 16, 25, 34), "vgg16": (2, 7, 14, 21, 28)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_indices(arch: str) -> list[int]:
    """torchvision `features` indices of the conv layers of `arch`."""
    indices, i = [], 0
    for item in VGG_PLANS[arch]:
        if item == "M":
            i += 1
        else:
            indices.append(i)
            i += 2
    return indices


class VGGFeatures(nn.Module):
    """ImageNet-normalised VGG; returns the tapped maps (a ReLU's index: its output; a conv's index: its output
    before the ReLU), stopping after the last tap.

    Input `[B, H, W, 3]` in [0, 1]; output a list of `[B, H/2^k, W/2^k, C_k]`.
    """

    arch: str = "vgg19"
    taps: Sequence[int] | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        if self.arch not in VGG_PLANS:
            raise ValueError(f"unknown VGG arch {self.arch!r}; expected one of {sorted(VGG_PLANS)}")
        taps = tuple(self.taps) if self.taps is not None else VGG_TAPS[self.arch]
        x = (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)
        outputs, i = [], 0
        for item in VGG_PLANS[self.arch]:
            if i > max(taps):
                break
            if item == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                i += 1
                continue
            x = nn.Conv(item, (3, 3), padding=((1, 1), (1, 1)), name=f"features_{i}")(x)
            if i in taps:
                outputs.append(x)
            x = nn.relu(x)
            if i + 1 in taps:
                outputs.append(x)
            i += 2
        return outputs
