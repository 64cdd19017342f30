"""Golden tests of the operator library against torch.nn.functional on fresh random inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metaportrait_jax.ops import landmark_maps, pyramid, resize, warp


def to_torch(x):
    return torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).contiguous()


def from_torch(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("src,dst", [((16, 16), (5, 7)), ((7, 9), (32, 20)), ((64, 64), (8, 8)),
                                     ((64, 48), (32, 24)), ((13, 13), (13, 13)), ((32, 32), (128, 128))])
def test_resize_bilinear_matches_torch(src, dst):
    x = np.random.default_rng(0).normal(size=(2, *src, 3)).astype(np.float32)
    ours = resize.resize_bilinear(jnp.asarray(x), dst)
    ref = from_torch(F.interpolate(to_torch(x), size=dst, mode="bilinear", align_corners=False))
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_nearest_helpers_match_torch():
    x = np.random.default_rng(1).normal(size=(1, 16, 16, 2)).astype(np.float32)
    for f in (2, 4, 8):
        ref = from_torch(F.interpolate(to_torch(x), scale_factor=1 / f, mode="nearest"))
        np.testing.assert_array_equal(resize.subsample_nearest(jnp.asarray(x), f), ref)
    up = from_torch(F.interpolate(to_torch(x), scale_factor=2, mode="nearest"))
    np.testing.assert_array_equal(resize.upsample_nearest(jnp.asarray(x), 2), up)


def test_jax_image_resize_nearest_differs_from_official():
    # Why subsample_nearest exists: jax.image.resize picks odd indices for a x2 downsample.
    x = jnp.arange(8.0).reshape(1, 8, 1, 1)
    assert not np.array_equal(jax.image.resize(x, (1, 4, 1, 1), "nearest"), resize.subsample_nearest(x, 2))


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_values_and_gradients_match_torch(padding_mode, align_corners):
    rng = np.random.default_rng(2)
    image = rng.normal(size=(2, 9, 11, 3)).astype(np.float32)
    grid = rng.uniform(-1.6, 1.6, size=(2, 6, 5, 2)).astype(np.float32)  # includes out-of-range samples
    cot = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)

    def f(img, g):
        return warp.grid_sample(img, g, align_corners=align_corners, padding_mode=padding_mode)

    out, vjp = jax.vjp(f, jnp.asarray(image), jnp.asarray(grid))
    d_image, d_grid = vjp(jnp.asarray(cot))

    ti = to_torch(image).requires_grad_(True)
    tg = torch.from_numpy(grid).requires_grad_(True)
    ref = F.grid_sample(ti, tg, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)
    ref.backward(to_torch(cot))
    np.testing.assert_allclose(out, from_torch(ref), atol=1e-5)
    np.testing.assert_allclose(d_image, from_torch(ti.grad), atol=1e-4)
    np.testing.assert_allclose(d_grid, tg.grad.numpy(), atol=1e-3, rtol=1e-4)


def test_official_zero_flow_is_not_identity_but_aligned_is():
    # Spec §2.0: on an 8-px row, output pixel j samples input coordinate j*W/(W-1) - 0.5, clipped.
    row = jnp.arange(8.0).reshape(1, 1, 8, 1) * jnp.ones((1, 8, 1, 1))
    zero = jnp.zeros((1, 8, 8, 2))
    official = warp.warp_with_flow(row, zero, "official")[0, 0, :, 0]
    expected = np.clip(np.arange(8) * 8 / 7 - 0.5, 0, 7)
    np.testing.assert_allclose(official, expected, atol=1e-5)
    np.testing.assert_allclose(official[:3], [0, 0.642857, 1.785714], atol=1e-5)
    image = jnp.asarray(np.random.default_rng(3).normal(size=(1, 32, 32, 3)), jnp.float32)
    for flow_size in (8, 32):
        out = warp.warp_with_flow(image, jnp.zeros((1, flow_size, flow_size, 2)), "aligned")
        np.testing.assert_allclose(out, image, atol=1e-5)


@pytest.mark.parametrize("dtype, atol", [(np.float32, 1e-4), (np.float64, 1e-12)])
def test_official_warp_matches_torch_deform_input(dtype, atol):
    # float64 end to end (the sampling grid included): what the float64 meta-step comparisons rely on
    rng = np.random.default_rng(4)
    image = rng.normal(size=(2, 32, 32, 4)).astype(dtype)
    flow = (0.1 * rng.normal(size=(2, 8, 8, 2))).astype(dtype)
    with jax.enable_x64(dtype == np.float64):
        ours = warp.warp_with_flow(jnp.asarray(image), jnp.asarray(flow), "official")
        assert ours.dtype == dtype
    # The official deform_input: deformation (NHWC grid) -> NCHW, bilinear resize, back, grid_sample.
    h = 8
    lin = torch.arange(h, dtype=getattr(torch, np.dtype(dtype).name))
    gx = (2 * lin / (h - 1) - 1).view(1, -1).repeat(h, 1)
    gy = (2 * lin / (h - 1) - 1).view(-1, 1).repeat(1, h)
    deformation = torch.stack([gx, gy], -1)[None] + torch.from_numpy(flow)
    deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=(32, 32), mode="bilinear")
    ref = F.grid_sample(to_torch(image), deformation.permute(0, 2, 3, 1), padding_mode="reflection",
                        align_corners=False)
    np.testing.assert_allclose(ours, from_torch(ref), atol=atol)


def test_flow_normalisation_conventions():
    flow = jnp.ones((1, 64, 64, 2))
    np.testing.assert_allclose(warp.pixel_flow_to_normalized(flow, "official")[0, 0, 0], [2 / 63, 2 / 63], rtol=1e-6)
    np.testing.assert_allclose(warp.pixel_flow_to_normalized(flow, "aligned")[0, 0, 0], [2 / 64, 2 / 64], rtol=1e-6)
    with pytest.raises(ValueError, match="convention"):
        warp.warp_with_flow(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 4, 4, 2)), "bogus")


def _torch_antialias_downsample(x, scale):
    sigma = (1 / scale - 1) / 2
    size = 2 * round(sigma * 4) + 1
    grid = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="ij")
    kernel = 1
    for g in grid:
        kernel = kernel * torch.exp(-((g - (size - 1) / 2) ** 2) / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).view(1, 1, size, size).repeat(x.shape[1], 1, 1, 1)
    out = F.conv2d(F.pad(x, (size // 2,) * 4), kernel, groups=x.shape[1])
    step = int(1 / scale)
    return out[:, :, ::step, ::step]


def test_image_pyramid_matches_torch():
    x = np.random.default_rng(5).uniform(size=(2, 64, 64, 3)).astype(np.float32)
    ours = pyramid.image_pyramid(jnp.asarray(x))
    assert [ours[s].shape[1] for s in (1.0, 0.5, 0.25, 0.125)] == [64, 32, 16, 8]
    np.testing.assert_array_equal(ours[1.0], x)
    for s in (0.5, 0.25, 0.125):
        np.testing.assert_allclose(ours[s], from_torch(_torch_antialias_downsample(to_torch(x), s)), atol=1e-5)
    assert [pyramid.gaussian_kernel_1d(s).size for s in (0.5, 0.25, 0.125)] == [5, 13, 29]


def test_gaze_heatmaps_peak_at_points_on_corner_grid():
    points = jnp.asarray([[[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]])
    maps = landmark_maps.gaze_heatmaps(points, 9, 9)
    assert maps.shape == (1, 9, 9, 3)
    assert maps[0, 0, 0, 0] == 1 and maps[0, 8, 8, 1] == 1 and maps[0, 4, 4, 2] == 1
    # One pixel (0.25 in norm coords) away: exp(-0.5 * 0.0625 / 0.005).
    np.testing.assert_allclose(maps[0, 4, 5, 2], np.exp(-0.5 * 0.0625 / 0.005), rtol=1e-5)


def test_box_mask_official_bounds():
    points = np.zeros((4, 2), np.float32)
    points[0, 0], points[1, 0] = -0.5, 0.0   # x: int(0.5*16/2)=4, int(1*8)=8
    points[2, 1], points[3, 1] = 0.25, 0.5   # y: int(1.25*8)=10, int(1.5*8)=12
    mask = landmark_maps.box_mask(points, (0, 1), (2, 3), 16, 16, pad=3)
    expected = np.zeros((16, 16, 1), np.float32)
    expected[7:16, 1:12] = 1
    np.testing.assert_array_equal(mask, expected)
    union = landmark_maps.box_masks(points, [((0, 1), (2, 3)), ((0, 0), (2, 2))], 16, 16, pad=0)
    assert union.sum() == landmark_maps.box_mask(points, (0, 1), (2, 3), 16, 16, 0).sum()
