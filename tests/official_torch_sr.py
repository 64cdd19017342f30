"""A PyTorch rebuild of the official temporal SR network (`GFPGANv1Clean_UnetWindow`), from the specification.

Test-only golden reference, NCHW, written the way the spec describes the official code: the same module tree (so
`state_dict()` keys equal `temporal_gfpgan.pth`'s), per-sample modulated kernels run as one grouped conv, torch's
`F.interpolate`. Sizes come from our config (`temporal_sr_config(v).to_dict()`). Input `(1, T, 3, h, w)` in [0, 1].
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def _resample(x, factor):
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, factor):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1)
        self.conv2 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)
        self.factor = factor

    def forward(self, x):
        out = F.leaky_relu(self.conv1(x), 0.2)
        out = F.leaky_relu(self.conv2(_resample(out, self.factor)), 0.2)
        return out + self.skip(_resample(x, self.factor))


class ConvReLUConv(nn.Module):
    """The temporal window: input is [f(t-1), f(t), f(t+1)] concatenated by the caller."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(3 * channels, 3 * channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(3 * channels, channels, 3, 1, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x):
        frames = x.shape[0]
        prev = [max(t - 1, 0) for t in range(frames)]
        nxt = [min(t + 1, frames - 1) for t in range(frames)]
        stacked = torch.cat([x[prev], x, x[nxt]], dim=1)
        return x + self.conv2(F.leaky_relu(self.conv1(stacked), 0.2))


class ModulatedConv2d(nn.Module):
    def __init__(self, cin, cout, k, style_dim, demodulate=True, upsample=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, cout, cin, k, k) / math.sqrt(cin * k * k))
        self.modulation = nn.Linear(style_dim, cin)
        nn.init.ones_(self.modulation.bias)
        self.demodulate, self.upsample, self.k = demodulate, upsample, k

    def forward(self, x, style):
        b, cin, h, w = x.shape
        weight = self.weight * self.modulation(style).view(b, 1, cin, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(b, -1, 1, 1, 1)
        if self.upsample:
            x = _resample(x, 2)
            h, w = 2 * h, 2 * w
        weight = weight.view(-1, cin, self.k, self.k)
        out = F.conv2d(x.reshape(1, b * cin, h, w), weight, padding=self.k // 2, groups=b)
        return out.view(b, -1, h, w)


class StyleConv(nn.Module):
    def __init__(self, cin, cout, style_dim, upsample=False):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(cin, cout, 3, style_dim, upsample=upsample)
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength; the noise is zero
        self.bias = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x, style):
        return F.leaky_relu(self.modulated_conv(x, style) * 2 ** 0.5 + self.bias, 0.2)


class ToRGB(nn.Module):
    def __init__(self, cin, style_dim):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(cin, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, style, skip=None):
        out = self.modulated_conv(x, style) + self.bias
        return out if skip is None else out + _resample(skip, 2)


class ConstantInput(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, 4, 4))


class NormStyleCode(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


class StyleGAN2GeneratorCSFT(nn.Module):
    def __init__(self, out_size, style_dim, channels):
        super().__init__()
        layers = [NormStyleCode()]
        for _ in range(8):
            layers += [nn.Linear(style_dim, style_dim), nn.LeakyReLU(0.2)]
        self.style_mlp = nn.Sequential(*layers)
        self.constant_input = ConstantInput(channels[0])
        self.style_conv1 = StyleConv(channels[0], channels[0], style_dim)
        self.to_rgb1 = ToRGB(channels[0], style_dim)
        self.style_convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        for i in range(1, len(channels)):
            self.style_convs.append(StyleConv(channels[i - 1], channels[i], style_dim, upsample=True))
            self.style_convs.append(StyleConv(channels[i], channels[i], style_dim))
            self.to_rgbs.append(ToRGB(channels[i], style_dim))
        self.noises = nn.Module()
        for i in range(2 * len(channels) - 1):
            res = 4 * 2 ** ((i + 1) // 2)
            self.noises.register_buffer(f"noise{i}", torch.randn(1, 1, res, res))

    def forward(self, latent, conditions):
        out = self.constant_input.weight.repeat(latent.shape[0], 1, 1, 1)
        out = self.style_conv1(out, latent[:, 0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for conv1, conv2, to_rgb in zip(self.style_convs[::2], self.style_convs[1::2], self.to_rgbs):
            out = conv1(out, latent[:, i])
            same, sft = torch.split(out, out.shape[1] // 2, dim=1)
            out = torch.cat([same, sft * conditions[i - 1] + conditions[i]], dim=1)
            out = conv2(out, latent[:, i + 1])
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip


class OfficialTemporalSR(nn.Module):
    def __init__(self, config):
        super().__init__()
        unet = list(config["unet_channels"])  # resolutions 4 .. out_size
        levels = len(unet) - 1
        self.out_size, self.style_dim = config["out_size"], config["style_dim"]
        self.num_latent = 2 * int(math.log2(self.out_size)) - 2
        self.conv_body_first = nn.Conv2d(3, unet[-1], 1)
        self.conv_body_down, self.window_down = nn.ModuleList(), nn.ModuleList()
        for level in range(levels):
            cin, cout = unet[levels - level], unet[levels - level - 1]
            self.conv_body_down.append(ResBlock(cin, cout, 0.5))
            self.window_down.append(ConvReLUConv(cout))
        self.final_conv = nn.Conv2d(unet[0], unet[0], 3, 1, 1)
        self.final_linear = nn.Linear(unet[0] * 16, self.num_latent * self.style_dim)
        self.conv_body_up, self.recurrent_forward = nn.ModuleList(), nn.ModuleList()
        self.condition_scale, self.condition_shift, self.toRGB = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level in range(levels):
            cin, cout = unet[level], unet[level + 1]
            self.conv_body_up.append(ResBlock(cin, cout, 2))
            self.recurrent_forward.append(ConvReLUConv(cout))
            for heads in (self.condition_scale, self.condition_shift):
                heads.append(nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1), nn.LeakyReLU(0.2),
                                           nn.Conv2d(cout, cout, 3, 1, 1)))
            self.toRGB.append(nn.Conv2d(cout, 3, 1))
        self.stylegan_decoder = StyleGAN2GeneratorCSFT(self.out_size, self.style_dim, [2 * c for c in unet])

    def forward(self, clip):
        assert clip.shape[0] == 1
        x = clip[0] * 2 - 1
        if x.shape[-1] != self.out_size:
            x = _resample(x, 2)
        feat = F.leaky_relu(self.conv_body_first(x), 0.2)
        skips = []
        for block, window in zip(self.conv_body_down, self.window_down):
            feat = window(block(feat))
            skips.insert(0, feat)
        feat = F.leaky_relu(self.final_conv(feat), 0.2)
        style = self.final_linear(feat.reshape(feat.shape[0], -1)).view(feat.shape[0], -1, self.style_dim)
        conditions = []
        for level, (block, window) in enumerate(zip(self.conv_body_up, self.recurrent_forward)):
            feat = window(block(feat + skips[level]))
            conditions += [self.condition_scale[level](feat), self.condition_shift[level](feat)]
        image = self.stylegan_decoder(style, conditions)
        return ((image + 1) / 2)[None]
