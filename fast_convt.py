"""Faster CPU kernels for the transposed convolutions of the interpreters'
decoders (PIQ's and L2I's psi), with the same results up to float rounding.

oneDNN computes the forward pass and the input gradient of a
``ConvTranspose2d`` near the CPU's fp32 peak, but not (issue 13, 2 Xeon
cores, batch 4):

* the weight gradient of the 4x4, stride-2 layers in channels_last: 2.9
  CPU-s where the 16 matrix products of ``k4s2_weight_grad`` take 1.6;
* the forward pass of a layer with ONE output channel (psi's last, 12x12):
  oneDNN vectorises over output channels (2.7 CPU-s) where ATen's im2col
  kernel ``slow_conv_transpose2d`` takes 0.4; on channels_last data the
  same columns made 32 input rows at a time (so that they stay in cache)
  take half of that again (176 -> 90 ms a clip).

``ConvTranspose2dCPU`` is a ``ConvTranspose2d`` computed that way;
``chunked_decoder.speed_up`` gives it to a module's layers.

Authors: the ESC-50 interpretability recipe developers.
"""

import torch
import torch.nn.functional as F

K4S2 = ((4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1)


def in_fp32(x):
    """Whether x is float32 and computed so (no autocast on its device): the
    condition of every faster path here and in ``chunked_decoder``."""
    return x.dtype == torch.float32 and not torch.is_autocast_enabled(
        x.device.type
    )


def eager(function):
    """``function`` run eagerly under torch.compile: a graph break, not a
    trace of its Python loops (which unrolled, made PIQ's first compiled
    step take over 15 minutes on 2 cores)."""
    return torch.compiler.disable(function, recursive=True)


def geometry(conv):
    """(kernel, stride, padding, output padding, dilation, groups) of a
    ConvTranspose2d, as in ``K4S2``."""
    return (
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.output_padding,
        conv.dilation,
        conv.groups,
    )


def k4s2_weight_grad(x, g):
    """Weight gradient [Ci, Co, 4, 4] of ``conv_transpose2d(x, W, stride=2,
    padding=1)`` at x [B, Ci, H, W] for the output gradient g [B, Co, 2H, 2W]:
    one matrix product over all clips and pixels per kernel tap. Output pixel
    (2I + ph, 2J + pw) gets tap (kh, kw) from input pixel (I + di, J + dj),
    di = (ph + 1 - kh) / 2: with x zero-padded by one pixel, that shift is a
    constant offset in the flattened channels_last tensor."""
    B, Ci, H, W = x.shape
    Co = g.shape[1]
    x = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    g = g.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    g = g.reshape(B, H, 2, W, 2, Co)  # [b, I, ph, J, pw, co]
    padded = x.new_zeros(B, H + 2, W + 2, Ci)
    padded[:, 1:-1, 1:-1] = x
    X = padded.view(-1, Ci)
    phase = x.new_zeros(B, H + 2, W + 2, Co)  # its border stays zero
    G = phase.view(-1, Co)
    n, width = len(X), W + 2
    grad = x.new_empty(Ci, Co, 4, 4)
    for ph in (0, 1):
        for pw in (0, 1):
            phase[:, 1:-1, 1:-1] = g[:, :, ph, :, pw]
            for kh in (1 - ph, 3 - ph):
                for kw in (1 - pw, 3 - pw):
                    shift = (ph + 1 - kh) // 2 * width + (pw + 1 - kw) // 2
                    lo, hi = max(0, -shift), min(n, n - shift)
                    grad[:, :, kh, kw] = X[lo + shift : hi + shift].T @ G[lo:hi]
    return grad


def _in_row_blocks(x, weight, bias, kernel, padding, rows=32):
    """Stride-1 transposed convolution of a channels_last x [B, Ci, H, W]:
    for ``rows`` input rows at a time, the columns W^T x [Co kh kw, rows W]
    (one matrix product that stays in cache) summed into place by
    ``F.fold`` (col2im); the padding cropped at the end."""
    (kh, kw), (ph, pw), Ci = kernel, padding, x.shape[1]
    H, W = x.shape[-2:]
    columns_of = weight.flatten(1).T  # [Co kh kw, Ci]
    canvas = x.new_zeros(len(x), weight.shape[1], H + kh - 1, W + kw - 1)
    for clip, pixels in zip(canvas, x.permute(0, 2, 3, 1)):  # [H, W, Ci]
        for top in range(0, H, rows):
            block = pixels[top : top + rows].reshape(-1, Ci)
            size = (len(block) // W + kh - 1, W + kw - 1)
            clip[:, top : top + size[0]] += F.fold(
                columns_of @ block.T, size, kernel
            )
    y = canvas[..., ph : H + kh - 1 - ph, pw : W + kw - 1 - pw]
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def conv_transpose(conv, x, weight, bias):
    """``conv``'s transposed convolution of x with ``weight`` and ``bias``;
    ATen's im2col kernel when it has one output channel (on CPU)."""
    kernel, stride, padding, out_padding, dilation, groups = geometry(conv)
    if conv.out_channels == 1 and x.device.type == "cpu":
        simple = (stride, out_padding, dilation, groups) == (
            (1, 1),
            (0, 0),
            (1, 1),
            1,
        )
        if simple and x.is_contiguous(memory_format=torch.channels_last):
            return _in_row_blocks(x, weight, bias, kernel, padding)
        return torch.ops.aten.slow_conv_transpose2d(
            x, weight, kernel, bias, stride, padding, out_padding, dilation
        )
    return F.conv_transpose2d(
        x, weight, bias, stride, padding, out_padding, groups, dilation
    )


def conv_transpose_grads(conv, x, weight, g, need_x=True, need_w=True):
    """(grad x, grad weight, grad bias) of ``conv_transpose`` at x for the
    output gradient g; None for what is not needed. x's values are only read
    for the weight gradient."""
    _, stride, padding, out_padding, dilation, groups = geometry(conv)
    fast_w = need_w and geometry(conv) == K4S2 and x.device.type == "cpu"
    fast_w = fast_w and g.shape[-2:] == (2 * x.shape[-2], 2 * x.shape[-1])
    gx, gw, _ = torch.ops.aten.convolution_backward(
        g,
        x,
        weight,
        None,
        stride,
        padding,
        dilation,
        True,
        out_padding,
        groups,
        [need_x, need_w and not fast_w, False],
    )
    if fast_w:
        gw = k4s2_weight_grad(x, g)
    gb = g.sum((0, 2, 3)) if need_w and conv.bias is not None else None
    return gx, gw, gb


class _ConvTranspose(torch.autograd.Function):
    """``conv_transpose`` with ``conv_transpose_grads`` as its backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, conv):
        ctx.save_for_backward(x, weight)
        ctx.conv = conv
        return conv_transpose(conv, x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx, gw, gb = conv_transpose_grads(
            ctx.conv, x, weight, g, need_x, need_w or need_b
        )
        return gx, gw if need_w else None, gb if need_b else None, None


_conv_transpose_eagerly = eager(_ConvTranspose.apply)


class ConvTranspose2dCPU(torch.nn.ConvTranspose2d):
    """A ``ConvTranspose2d`` computed with the faster kernels on CPU in fp32
    (elsewhere, under autocast or with ``output_size``, as the base class)."""

    def forward(self, x, output_size=None):
        """Transposed convolution of x [B, Ci, H, W]."""
        if output_size is not None or x.device.type != "cpu" or not in_fp32(x):
            return super().forward(x, output_size)
        return _conv_transpose_eagerly(x, self.weight, self.bias, self)
