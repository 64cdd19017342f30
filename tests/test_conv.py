"""conv2d (custom weight gradient) against jax.lax.conv_general_dilated: values, both gradients, second order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaportrait_jax.ops import conv as conv_module
from metaportrait_jax.ops.conv import conv2d, weight_grad

RTOL = 1e-5  # fp32, relative to the largest magnitude


def lax_conv(x, kernel, stride, padding):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def data(batch, size, cin, cout, k, stride, padding, seed=0, width=None):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, size, width or size, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)
    g = jnp.asarray(rng.standard_normal(lax_conv(x, kernel, stride, padding).shape), jnp.float32)
    return x, kernel, g


def assert_close(actual, expected, rtol=RTOL):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(np.max(np.abs(expected)), 1e-30)
    assert np.max(np.abs(actual - expected)) <= rtol * scale, np.max(np.abs(actual - expected)) / scale


# (batch, size, in, out, kernel, stride, padding); odd sizes and stride 2 leave rows the windows never reach.
SHAPES = [
    (1, 16, 8, 12, 3, 1, 1),
    (2, 16, 8, 12, 3, 1, 1),
    (2, 17, 5, 7, 3, 2, 1),
    (1, 16, 4, 6, 3, 2, 0),
    (2, 15, 3, 5, 7, 1, 3),
    (1, 12, 6, 4, 1, 1, 0),
    (2, 11, 6, 4, 1, 2, 0),
    (1, 9, 3, 2, 4, 3, 2),
    (1, 8, 32, 16, 3, 1, 1),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_match_lax(shape):
    x, kernel, g = data(*shape)
    stride, padding = shape[5], shape[6]
    assert_close(conv2d(x, kernel, stride, padding), lax_conv(x, kernel, stride, padding))
    dx_ref, dw_ref = jax.vjp(lambda a, b: lax_conv(a, b, stride, padding), x, kernel)[1](g)
    dx, dw = jax.vjp(lambda a, b: conv2d(a, b, stride, padding), x, kernel)[1](g)
    assert_close(dx, dx_ref)
    assert_close(dw, dw_ref)


@pytest.mark.parametrize("method", ["lax", "patches", "strips"])
@pytest.mark.parametrize("shape", [(2, 17, 5, 7, 3, 2, 1), (3, 10, 4, 3, 3, 1, 1), (1, 13, 3, 4, 7, 1, 3),
                                   (2, 9, 6, 5, 1, 1, 0)])
def test_every_weight_grad_method(shape, method, monkeypatch):
    # Tiny strips (a few pixels each) so the scan takes many steps, pads rows and groups images.
    monkeypatch.setattr(conv_module, "STRIP_BYTES", 4 * 5 * shape[2] * shape[4] ** 2)
    monkeypatch.setattr(conv_module, "MIN_STRIP_PIXELS", 1)
    x, kernel, g = data(*shape)
    stride, padding = shape[5], shape[6]
    dw_ref = jax.vjp(lambda b: lax_conv(x, b, stride, padding), kernel)[1](g)[0]
    assert_close(weight_grad(x, g, kernel.shape[:2], stride, padding, method), dw_ref)
    dw = jax.grad(lambda b: jnp.vdot(conv2d(x, b, stride, padding, weight_grad_method=method), g))(kernel)
    assert_close(dw, dw_ref)


@pytest.mark.parametrize("strip_bytes", [1 << 20, 2000, 40000])
def test_strips_over_images_and_rows(strip_bytes, monkeypatch):
    # Whole-image groups (batch 5 does not divide evenly) and row strips, against lax.
    monkeypatch.setattr(conv_module, "STRIP_BYTES", strip_bytes)
    monkeypatch.setattr(conv_module, "MIN_STRIP_PIXELS", 1)
    x, kernel, g = data(5, 12, 4, 6, 3, 1, 1, width=10)
    dw_ref = jax.vjp(lambda b: lax_conv(x, b, 1, 1), kernel)[1](g)[0]
    assert_close(weight_grad(x, g, (3, 3), 1, 1, "strips"), dw_ref)


def test_auto_picks_strips_for_large_problems(monkeypatch):
    x, kernel, g = data(1, 32, 16, 8, 3, 1, 1)
    dw_ref = jax.vjp(lambda b: lax_conv(x, b, 1, 1), kernel)[1](g)[0]
    assert "scan" not in str(jax.make_jaxpr(lambda: weight_grad(x, g, (3, 3), 1, 1, "auto"))())
    monkeypatch.setattr(conv_module, "SINGLE_PRODUCT_BYTES", 1 << 16)  # all patches: 1024 px * 576 B > 64 kB
    assert "scan" in str(jax.make_jaxpr(lambda: weight_grad(x, g, (3, 3), 1, 1, "auto"))())
    assert_close(weight_grad(x, g, (3, 3), 1, 1, "auto"), dw_ref)


def test_grad_of_grad_matches_lax():
    # Second-order MAML: one inner SGD step through the conv, outer loss differentiated w.r.t. the initial kernel
    # and the input; and a Hessian-vector product.
    x, kernel, g = data(2, 10, 3, 4, 3, 2, 1)
    target = g

    def outer(conv, kernel, x):
        def inner_loss(k):
            return jnp.mean((jnp.tanh(conv(x, k, 2, 1)) - target) ** 2)

        adapted = kernel - 0.5 * jax.grad(inner_loss)(kernel)
        return jnp.mean(jnp.tanh(conv(x * 0.7, adapted, 2, 1)) ** 2) + jnp.sum(jax.grad(inner_loss)(kernel) ** 2)

    ref = jax.grad(lambda k, a: outer(lax_conv, k, a), argnums=(0, 1))(kernel, x)
    ours = jax.grad(lambda k, a: outer(conv2d, k, a), argnums=(0, 1))(kernel, x)
    for a, b in zip(ours, ref):
        assert_close(a, b, 1e-4)

    v = jnp.asarray(np.random.default_rng(1).standard_normal(kernel.shape), jnp.float32)

    def hvp(conv):
        loss = lambda k: jnp.sum(jnp.sin(conv(x, k, 2, 1)))  # noqa: E731
        return jax.jvp(jax.grad(loss), (kernel,), (v,))[1]

    assert_close(hvp(conv2d), hvp(lax_conv), 1e-4)
    small = kernel[:, :, :2, :2]
    hess = jax.hessian(lambda k: jnp.sum(jnp.sin(conv2d(x[..., :2], k, 1, 1))))(small)
    hess_ref = jax.hessian(lambda k: jnp.sum(jnp.sin(lax_conv(x[..., :2], k, 1, 1))))(small)
    assert_close(hess, hess_ref, 1e-4)


def test_jit_and_vmap():
    x, kernel, g = data(3, 9, 4, 5, 3, 1, 1)
    kernels = jnp.stack([kernel, 2 * kernel, -kernel])

    def loss(conv, k, a):
        return jnp.sum(conv(a, k, 1, 1) * g[:1])

    ours = jax.jit(jax.vmap(jax.grad(lambda k, a: loss(conv2d, k, a), argnums=(0, 1))))(kernels, x[:, None])
    ref = jax.vmap(jax.grad(lambda k, a: loss(lax_conv, k, a), argnums=(0, 1)))(kernels, x[:, None])
    for a, b in zip(ours, ref):
        assert_close(a, b)
    # vmap over the batch of the gradient too (the per-example weight gradients).
    per_example = jax.vmap(jax.grad(lambda k, a, c: jnp.sum(conv2d(a[None], k, 2, 1) * c[None])), (None, 0, 0))
    g2 = g[:, ::2, ::2]
    ref2 = jax.vmap(jax.grad(lambda k, a, c: jnp.sum(lax_conv(a[None], k, 2, 1) * c[None])), (None, 0, 0))
    assert_close(jax.jit(per_example)(kernel, x, g2), ref2(kernel, x, g2))


def test_bfloat16():
    x, kernel, g = data(2, 12, 8, 6, 3, 1, 1)
    xb, gb = x.astype(jnp.bfloat16), g.astype(jnp.bfloat16)
    y = conv2d(xb, kernel, 1, 1)  # fp32 kernel, cast to the input dtype
    assert y.dtype == jnp.bfloat16
    dx, dw = jax.vjp(lambda a, b: conv2d(a, b, 1, 1), xb, kernel)[1](gb)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    dx_ref, dw_ref = jax.vjp(lambda a, b: lax_conv(a, b, 1, 1), x, kernel)[1](gb.astype(jnp.float32))
    assert_close(y.astype(jnp.float32), lax_conv(x, kernel, 1, 1), 3e-2)
    assert_close(dx.astype(jnp.float32), dx_ref, 3e-2)
    assert_close(dw, dw_ref, 3e-2)
    for method in ("patches", "strips"):
        assert weight_grad(xb, gb, (3, 3), 1, 1, method).dtype == jnp.bfloat16


def test_rejects_bad_arguments():
    x, kernel, _ = data(1, 8, 3, 4, 3, 1, 1)
    with pytest.raises(ValueError):
        conv2d(x, kernel[:, :, :2], 1, 1)
    with pytest.raises(ValueError):
        conv2d(x, kernel, 1, 1, weight_grad_method="fft")


def test_auto_weight_grad_uses_the_products_on_cpu_and_xla_elsewhere(monkeypatch):
    """'auto' picks per platform when the program is lowered: on CPU the strips (a `while` loop over matrix
    products), for GPU and TPU XLA's own weight-gradient convolution; on CPU it equals 'strips' bit for bit."""
    x, kernel, g = data(1, 96, 8, 32, 3, 1, 1)  # batch 1, 32 output channels, 96²: prefer_lax is False
    assert not conv_module.prefer_lax(1, 8, 32, 9, 1, 96 * 96)

    def grad(method):
        return jax.jit(lambda b: jax.grad(lambda k: jnp.vdot(conv2d(x, k, 1, 1, weight_grad_method=method), g))(b))

    def lowered(platform: str) -> str:
        exported = jax.export.export(grad("auto"), platforms=(platform,))(jax.ShapeDtypeStruct(kernel.shape,
                                                                                                kernel.dtype))
        return exported.mlir_module()

    monkeypatch.setattr(conv_module, "SINGLE_PRODUCT_BYTES", 0)  # strips where 'auto' would take one product
    np.testing.assert_array_equal(grad("auto")(kernel), grad("strips")(kernel))
    cpu, cuda, tpu = lowered("cpu"), lowered("cuda"), lowered("tpu")
    # the program is the weight gradient alone (x is a constant: no input gradient; the loss needs no forward)
    assert "stablehlo.while" in cpu and "stablehlo.convolution" not in cpu
    for other in (cuda, tpu):
        assert "stablehlo.while" not in other and other.count("stablehlo.convolution") == 1
