"""A PyTorch rebuild of the official MetaPortrait base generator and discriminator, from the spec.

Test-only golden reference: torch NCHW modules written the way the official code is (same module tree, so
`state_dict()` keys equal the released checkpoint's), with torch's own `spectral_norm`, `F.grid_sample`,
`F.interpolate` and InstanceNorm. Sizes come from our model config dict (`generator_config(v).to_dict()`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm


def make_coordinate_grid(h, w):
    x = 2 * (torch.arange(w, dtype=torch.float32) / (w - 1)) - 1
    y = 2 * (torch.arange(h, dtype=torch.float32) / (h - 1)) - 1
    return torch.stack([x.view(1, -1).repeat(h, 1), y.view(-1, 1).repeat(1, w)], dim=2)


def kp2gaussian(kp, spatial_size, kp_variance):
    grid = make_coordinate_grid(*spatial_size)[None, None]          # 1,1,h,w,2
    mean = kp[:, :, None, None, :]                                  # B,N,1,1,2
    return torch.exp(-0.5 * ((grid - mean) ** 2).sum(-1) / kp_variance)


def deform_input(inp, deformation):
    _, h_old, w_old, _ = deformation.shape
    _, _, h, w = inp.shape
    if h_old != h or w_old != w:
        deformation = deformation.permute(0, 3, 1, 2)
        deformation = F.interpolate(deformation, size=(h, w), mode="bilinear", align_corners=False)
        deformation = deformation.permute(0, 2, 3, 1)
    return F.grid_sample(inp, deformation, padding_mode="reflection", align_corners=False)


class ADAIN(nn.Module):
    def __init__(self, norm_nc, feature_nc, hidden):
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Linear(feature_nc, hidden), nn.ReLU())
        self.mlp_gamma = nn.Linear(hidden, norm_nc)
        self.mlp_beta = nn.Linear(hidden, norm_nc)

    def forward(self, x, feature):
        normalized = self.param_free_norm(x)
        actv = self.mlp_shared(feature.view(feature.size(0), -1))
        gamma = self.mlp_gamma(actv).view(*x.shape[:2], 1, 1)
        beta = self.mlp_beta(actv).view(*x.shape[:2], 1, 1)
        return normalized * (1 + gamma) + beta


class SameBlock2d(nn.Module):
    def __init__(self, in_f, out_f, adain_hidden, code_dim):
        super().__init__()
        self.conv = nn.Conv2d(in_f, out_f, 3, padding=1)
        self.adain = adain_hidden is not None
        self.norm = ADAIN(out_f, code_dim, adain_hidden) if self.adain else nn.InstanceNorm2d(out_f, affine=True)

    def forward(self, x, code=None):
        out = self.conv(x)
        out = self.norm(out, code) if self.adain else self.norm(out)
        return F.relu(out)


class DownBlock2d(SameBlock2d):
    def __init__(self, in_f, out_f, adain_hidden, code_dim, lwarp):
        super().__init__(in_f, out_f, adain_hidden, code_dim)
        self.pool = nn.AvgPool2d(2)
        if lwarp:
            self.SameBlock2d = SameBlock2d(out_f, out_f, adain_hidden, code_dim)
        self.lwarp = lwarp

    def forward(self, x, code=None):
        out = self.pool(super().forward(x, code))
        return self.SameBlock2d(out, code) if self.lwarp else out


class UpBlock2d(SameBlock2d):
    def __init__(self, in_f, out_f, adain_hidden, code_dim, lwarp):
        super().__init__(in_f, out_f, adain_hidden, code_dim)
        if lwarp:
            self.SameBlock2d = SameBlock2d(out_f, out_f, adain_hidden, code_dim)
        self.lwarp = lwarp

    def forward(self, x, code=None):
        out = super().forward(F.interpolate(x, scale_factor=2), code)
        return self.SameBlock2d(out, code) if self.lwarp else out


class Encoder(nn.Module):
    def __init__(self, be, in_f, num_blocks, max_f, adain_hidden, code_dim, lwarp):
        super().__init__()
        self.down_blocks = nn.ModuleList([
            DownBlock2d(in_f if i == 0 else min(max_f, be * 2 ** i), min(max_f, be * 2 ** (i + 1)),
                        adain_hidden, code_dim, lwarp) for i in range(num_blocks)])

    def forward(self, x, code=None):
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1], code))
        return outs


class Decoder(nn.Module):
    def __init__(self, be, in_f, num_blocks, max_f, adain_hidden, code_dim, lwarp, dec_lease):
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            if i < dec_lease:
                break
            in_filters = (1 if i == num_blocks - 1 else 2) * min(max_f, be * 2 ** (i + 1))
            blocks.append(UpBlock2d(in_filters, min(max_f, be * 2 ** i), adain_hidden, code_dim, lwarp))
        self.up_blocks = nn.ModuleList(blocks)

    def forward(self, x, code=None, return_all=False):
        out = x.pop()
        levels = [out]
        for block in self.up_blocks:
            out = block(out, code)
            levels.append(out)
            out = torch.cat([out, x.pop()], dim=1)
        levels[-1] = out
        return levels if return_all else out


class Hourglass(nn.Module):
    def __init__(self, be, in_f, num_blocks, max_f, adain_hidden=None, code_dim=None, lwarp=False, dec_lease=0):
        super().__init__()
        self.encoder = Encoder(be, in_f, num_blocks, max_f, adain_hidden, code_dim, lwarp)
        self.decoder = Decoder(be, in_f, num_blocks, max_f, adain_hidden, code_dim, lwarp, dec_lease)

    def forward(self, x, code=None, return_all=False):
        return self.decoder(self.encoder(x, code), code, return_all)


class LayerNorm2d(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1))

    def forward(self, x):
        return F.layer_norm(x, x.shape[1:], eps=1e-5) * self.weight + self.bias


class DenseMotionNetworkReg(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["dense_motion"]
        self.hourglass = Hourglass(d["block_expansion"], 9, d["num_blocks"], d["max_features"], d["adain_hidden"],
                                   cfg["ladder"]["z_dim"], lwarp=True, dec_lease=d["dec_lease"])
        out_filters = 2 * min(d["max_features"], d["block_expansion"] * 2 ** d["dec_lease"])
        k = d["head_kernel"]
        self.reger = nn.Sequential(LayerNorm2d(out_filters), nn.LeakyReLU(0.1),
                                   nn.Conv2d(out_filters, 2, k, padding=k // 2))
        self.occlusion_net = nn.Sequential(LayerNorm2d(out_filters), nn.LeakyReLU(0.1),
                                           nn.Conv2d(out_filters, 1, k, padding=k // 2))

    def forward(self, x, code):
        feature = self.hourglass(x, code)
        flow = self.reger(feature)
        h, w = flow.shape[2:]
        flow = torch.stack([flow[:, 0] * 2 / (w - 1), flow[:, 1] * 2 / (h - 1)], dim=1)
        deformation = make_coordinate_grid(h, w)[None] + flow.permute(0, 2, 3, 1)
        occlusion = torch.sigmoid(self.occlusion_net(feature))
        occlusion = F.interpolate(occlusion, size=x.shape[2:], mode="bilinear", align_corners=False)
        return dict(flow=flow, deformation=deformation, occlusion_map=occlusion)


class LadderEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.size = cfg["image_size"]
        widths = cfg["ladder"]["widths"]
        cin = 9
        for i, w in enumerate(widths):
            setattr(self, f"layer{i + 1}", nn.Sequential(spectral_norm(nn.Conv2d(cin, w, 3, 2, 1, bias=False)),
                                                         nn.InstanceNorm2d(w)))
            cin = w
        self.num_layers = len(widths)
        side = self.size // 2 ** len(widths)
        self.fc = nn.Linear(cin * side * side, cfg["ladder"]["z_dim"])

    def forward(self, x):
        if x.shape[2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        for i in range(self.num_layers):
            x = F.leaky_relu(getattr(self, f"layer{i + 1}")(x), 0.2)
        z = self.fc(x.view(x.size(0), -1))
        return z / (z.norm(dim=1, keepdim=True) + 1e-5)


class LinearOrig(nn.Module):
    """nn.Linear whose weight went through the official EqualLR hook: stored as `weight_orig`."""

    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.weight_orig = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x):
        return F.linear(x, self.weight_orig * math.sqrt(2 / self.weight_orig.shape[1]), self.bias)


class EqualLinear(nn.Module):
    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.linear = LinearOrig(in_dim, out_dim)

    def forward(self, x):
        return self.linear(x)


class AdaINID(nn.Module):
    def __init__(self, channels, style_dim):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels)
        self.style = EqualLinear(style_dim, 2 * channels)

    def forward(self, x, style):
        gamma, beta = self.style(style)[:, :, None, None].chunk(2, 1)
        return gamma * self.norm(x) + beta


class SPADE(nn.Module):
    def __init__(self, norm_nc, label_nc, hidden, id_dim):
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.mlp_attention = nn.Sequential(nn.Conv2d(norm_nc, 1, 3, padding=1), nn.Sigmoid())
        self.adain = AdaINID(norm_nc, id_dim)

    def forward(self, x, segmap, class_emb):
        normalized = self.param_free_norm(x)
        actv = self.mlp_shared(segmap)
        spade = normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)
        attention = self.mlp_attention(x)
        return attention * spade + (1 - attention) * self.adain(x, class_emb)


class SPADEResnetBlock(nn.Module):
    def __init__(self, fin, fout, label_nc, hidden, id_dim):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmid = min(fin, fout)
        self.conv_0 = spectral_norm(nn.Conv2d(fin, fmid, 3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(fmid, fout, 3, padding=1))
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))
        self.norm_0 = SPADE(fin, label_nc, hidden, id_dim)
        self.norm_1 = SPADE(fmid, label_nc, hidden, id_dim)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc, hidden, id_dim)

    def forward(self, x, seg, class_emb):
        x_s = self.conv_s(self.norm_s(x, seg, class_emb)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg, class_emb), 2e-1))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg, class_emb), 2e-1))
        return x_s + dx


class SPADEGenerator(nn.Module):
    def __init__(self, cfg, label_nc):
        super().__init__()
        nf, hidden, id_dim = cfg["spade"]["conv_dim"], cfg["spade"]["hidden"], cfg["id_dim"]
        self.num_middle = int(round(math.log2(cfg["image_size"] / 32))) - 1
        self.conv1 = spectral_norm(nn.ConvTranspose2d(id_dim, 16 * nf, 4, 1, 0))
        self.head_0 = SPADEResnetBlock(16 * nf, 16 * nf, label_nc[0], hidden, id_dim)
        for i in range(self.num_middle):
            setattr(self, f"G_middle_{i}", SPADEResnetBlock(16 * nf, 16 * nf, label_nc[0], hidden, id_dim))
        chans = [16 * nf, 8 * nf, 4 * nf, 2 * nf, nf]
        for i in range(4):
            setattr(self, f"up_{i}", SPADEResnetBlock(chans[i], chans[i + 1], label_nc[i], hidden, id_dim))
        self.conv_img = nn.Conv2d(nf, 3, 3, padding=1)

    def forward(self, features, class_emb):
        def up(t):
            return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)

        def fit(seg, t):
            return F.interpolate(seg, size=t.shape[2:], mode="bilinear", align_corners=False)

        x = self.conv1(class_emb.view(class_emb.size(0), -1, 1, 1))
        x = self.head_0(x, fit(features[0], x), class_emb)
        for i in range(self.num_middle):
            x = up(x)
            x = getattr(self, f"G_middle_{i}")(x, fit(features[0], x), class_emb)
        for i in range(4):
            x = up(x)
            x = getattr(self, f"up_{i}")(x, features[i], class_emb)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 2e-1)))


class OfficialGenerator(nn.Module):
    """`OcclusionAwareSPADEGenerator(hasid=True)` with the released settings."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        fe = cfg["feature_encoder"]
        self.ladder_network = LadderEncoder(cfg)
        self.dense_motion_network = DenseMotionNetworkReg(cfg)
        self.feature_encoder = Hourglass(fe["block_expansion"], 3, fe["num_blocks"], fe["max_features"])
        self.fuse_high_res = nn.Conv2d(fe["block_expansion"] + 3, fe["fuse_channels"], 3, padding=1)
        be, mf, nb = fe["block_expansion"], fe["max_features"], fe["num_blocks"]
        level_channels = [min(mf, be * 2 ** nb)] + [min(mf, be * 2 ** i) for i in reversed(range(1, nb))] + \
            [fe["fuse_channels"]]
        extra = 1 + cfg["num_gaze"] + 6 + 3
        self.SPDAE_G = SPADEGenerator(cfg, [c + extra for c in level_channels])
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight, gain=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, source, source_line, driving_line, driving_ldmk, mouth_mask, source_id, stage="Full"):
        input_t = torch.cat([source, source_line, driving_line], dim=1)
        drv_exp = self.ladder_network(input_t)
        out = self.dense_motion_network(input_t, drv_exp)
        out["deformed"] = deform_input(source, out["deformation"])
        if stage == "Warp":
            return out
        feats = self.feature_encoder(source, return_all=True)
        feats[-1] = self.fuse_high_res(feats[-1])
        ldmk_line = torch.cat([source_line, driving_line], dim=1)
        mouth_line = driving_line * mouth_mask
        gaze = slice(29, 29 + self.cfg["num_gaze"])
        conditions = []
        for feat in feats:
            size = feat.shape[2:]
            # The official in-place overwrite: each level resizes the previous level's line images.
            ldmk_line = F.interpolate(ldmk_line, size=size, mode="bilinear", align_corners=False)
            mouth_line = F.interpolate(mouth_line, size=size, mode="bilinear", align_corners=False)
            occlusion = F.interpolate(out["occlusion_map"], size=size, mode="bilinear", align_corners=False)
            heatmap = kp2gaussian(driving_ldmk, size, self.cfg["gaze_variance"])[:, gaze]
            conditions.append(torch.cat([deform_input(feat, out["deformation"]), occlusion, heatmap, ldmk_line,
                                         mouth_line], dim=1))
        out["prediction"] = self.SPDAE_G(conditions, source_id)
        return out


class DownBlockD(nn.Module):
    def __init__(self, in_f, out_f, norm, pool):
        super().__init__()
        self.conv = nn.Conv2d(in_f, out_f, 4)
        if norm:
            self.norm = nn.InstanceNorm2d(out_f, affine=True)
        self.use_norm, self.pool = norm, pool

    def forward(self, x):
        out = self.conv(x)
        if self.use_norm:
            out = self.norm(out)
        out = F.leaky_relu(out, 0.2)
        return F.avg_pool2d(out, 2) if self.pool else out


class PatchDiscriminator(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["discriminator"]
        be, mf, nb = d["block_expansion"], d["max_features"], d["num_blocks"]
        self.down_blocks = nn.ModuleList([
            DownBlockD(3 if i == 0 else min(mf, be * 2 ** i), min(mf, be * 2 ** (i + 1)), norm=i != 0,
                       pool=i != nb - 1) for i in range(nb)])
        self.conv = nn.Conv2d(min(mf, be * 2 ** nb), 1, 1)

    def forward(self, x):
        features = []
        for block in self.down_blocks:
            x = block(x)
            features.append(x)
        return features, self.conv(x)


class OfficialDiscriminator(nn.Module):
    """`MultiScaleDiscriminator(scales=[1])`: returns (4 feature maps, patch logits)."""

    def __init__(self, cfg):
        super().__init__()
        self.discs = nn.ModuleDict({"1": PatchDiscriminator(cfg)})
        self.apply(OfficialGenerator._init_weights)

    def forward(self, x):
        return self.discs["1"](x)


def remove_spectral_norm_all(module):
    """The official `--remove_sn`: fold σ from the stored u, v into plain weights."""
    for m in module.modules():
        if hasattr(m, "weight_u"):
            torch.nn.utils.remove_spectral_norm(m)
    return module
