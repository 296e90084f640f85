"""Faster CPU kernels for the transposed convolutions of the interpreters'
decoders (PIQ's and L2I's psi), with the same results up to float rounding.

oneDNN computes the forward pass and the input gradient of a
``ConvTranspose2d`` near the CPU's fp32 peak, but not (issue 13, 2 Xeon
cores, batch 4):

* the weight gradient of the strided layers in channels_last: PIQ's 4x4,
  stride-2 layers 2.9 CPU-s where one matrix product per kernel tap
  (``strided_weight_grad``) takes 1.6; the ViT decoder's 4x2, stride-2
  layer (768 channels, 424 x 508 output) 5.8 s a clip against 1.7;
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


def in_fp32(x):
    """Whether x is a CPU float32 tensor computed so (no CPU autocast): the
    condition of every faster path here and in ``chunked_decoder``. On any
    other device the layers run as speechbrain's (cuDNN on CUDA), even if
    ``speed_up`` was applied."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def run_eagerly(cls, name):
    """Makes the method ``cls.name`` (a staticmethod too) run eagerly under
    torch.compile: a graph break, not a trace of its Python loops (which,
    unrolled, made PIQ's first compiled step take over 15 minutes on 2
    cores). ``speed_up`` calls it when it gives a model the kernels, not
    this module's import: ``torch.compiler.disable`` imports torch._dynamo,
    0.8 s at the start of every script, most of which never use the
    kernels. Idempotent."""
    method = cls.__dict__[name]
    static = isinstance(method, staticmethod)
    function = method.__func__ if static else method
    if getattr(function, "runs_eagerly", False):
        return
    eager = torch.compiler.disable(function, recursive=True)
    eager.runs_eagerly = True
    setattr(cls, name, staticmethod(eager) if static else eager)


def geometry(conv):
    """(kernel, stride, padding, output padding, dilation, groups) of a
    ConvTranspose2d."""
    return (
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.output_padding,
        conv.dilation,
        conv.groups,
    )


def _taps(kernel, stride, padding):
    """Per kernel tap a along one axis: (phase, shift) with a - padding =
    stride * shift + phase, 0 <= phase < stride. Output index
    stride * i + a - padding of input index i is then row i + shift of the
    output's phase ``phase`` (its indices phase, phase + stride, ...)."""
    return [
        ((a - padding) % stride, (a - padding) // stride) for a in range(kernel)
    ]


def strided_weight_grad(x, g, kernel, stride, padding):
    """Weight gradient [Ci, Co, kh, kw] of ``conv_transpose2d(x, W, stride=
    stride, padding=padding)`` (any output padding) at x [B, Ci, H, W] for
    the output gradient g [B, Co, Ho, Wo]: one matrix product over all clips
    and pixels per kernel tap, X^T G with X [pixels, Ci] and G [pixels, Co].
    Tap (a, b) pairs input pixel (i, j) with pixel (i + dh, j + dw) of one
    phase of g (``_taps``); with x and that phase placed at the same offset
    on one zero-bordered canvas, the pairing is a constant shift
    dh * width + dw of the flattened channels_last rows."""
    B, Ci, H, W = x.shape
    Co, Ho, Wo = g.shape[1:]
    taps_h, taps_w = (_taps(*axis) for axis in zip(kernel, stride, padding))
    dh, dw = [d for _, d in taps_h], [d for _, d in taps_w]
    sh, sw = stride
    # the canvas holds x and every phase of g, with room for every shift
    top, left = max(0, -min(dh)), max(0, -min(dw))
    rows = top + max(H, -(-Ho // sh)) + max(0, max(dh))
    width = left + max(W, -(-Wo // sw)) + max(0, max(dw))
    x = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    g = g.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    canvas = x.new_zeros(B, rows, width, Ci)
    canvas[:, top : top + H, left : left + W] = x
    X = canvas.view(-1, Ci)
    phase = x.new_empty(B, rows, width, Co)
    G = phase.view(-1, Co)
    n = len(X)
    grad = x.new_empty(Ci, Co, *kernel)
    for ph in range(sh):
        for pw in range(sw):
            taps = [
                (a, b)
                for a, (phase_a, _) in enumerate(taps_h)
                for b, (phase_b, _) in enumerate(taps_w)
                if (phase_a, phase_b) == (ph, pw)
            ]
            if not taps:
                continue
            part = g[:, ph::sh, pw::sw]
            phase.zero_()
            phase[:, top : top + part.shape[1], left : left + part.shape[2]] = (
                part
            )
            for a, b in taps:
                shift = dh[a] * width + dw[b]
                lo, hi = max(0, -shift), min(n, n - shift)
                grad[:, :, a, b] = X[lo:hi].T @ G[lo + shift : hi + shift]
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
    kernel, stride, padding, out_padding, dilation, groups = geometry(conv)
    fast_w = need_w and x.device.type == "cpu" and stride != (1, 1)
    fast_w = fast_w and (dilation, groups) == ((1, 1), 1)
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
        gw = strided_weight_grad(x, g, kernel, stride, padding)
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


class ConvTranspose2dCPU(torch.nn.ConvTranspose2d):
    """A ``ConvTranspose2d`` computed with the faster kernels on CPU in fp32
    (elsewhere, under autocast or with ``output_size``, as the base class)."""

    # run eagerly under torch.compile once ``speed_up`` applied the kernels
    _fast = staticmethod(_ConvTranspose.apply)

    def forward(self, x, output_size=None):
        """Transposed convolution of x [B, Ci, H, W]."""
        if output_size is not None or x.device.type != "cpu" or not in_fp32(x):
            return super().forward(x, output_size)
        return self._fast(x, self.weight, self.bias, self)
