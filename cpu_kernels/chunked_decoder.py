"""Leaner training of the interpreters' transposed-convolution decoders
(PIQ's and L2I's psi), with the same results up to float rounding.

A decoder is a ``Sequential`` of [ConvTranspose2d, ReLU, BatchNorm2d] blocks
and a last ConvTranspose2d to one channel. Trained as usual, autograd keeps
the ReLU and BatchNorm outputs of every block, at full resolution two
[B, 256, 408, 504] maps of 3.4 GB each at batch 16. ``ChunkedDecoder``
keeps the head's input, the ReLU output r of the head's last block and the
last block's ReLU output y only:

* forward: the head without autograd; the last block's y = relu(up(x)) in
  pieces of ``piece`` clips, x = bn3(r) = a3 r + c3 made piece by piece;
  BatchNorm's statistics over the whole batch; the output piece by piece,
  with that BatchNorm folded into the last convolution (never materialised);
* backward: BatchNorm's sums over all pieces from two weight gradients,
  then the gradients piece by piece (a piece of y is freed once used); the
  head's last block by hand from r; the layers before it recomputed with
  autograd (their BatchNorm layers with the same batch statistics, the
  running statistics updated once) and differentiated.

The arithmetic of the folded BatchNorm is ``folded_batchnorm``'s.
``speed_up(module, piece)`` gives every decoder of ``module`` this and the
faster kernels of ``fast_convt``, without changing parameters, buffers or
state_dict keys.

Authors: the ESC-50 interpretability recipe developers.
"""

import torch
import torch.nn.functional as F

from cpu_kernels.fast_convt import (
    ConvTranspose2dCPU,
    conv_transpose,
    conv_transpose_grads,
    in_fp32,
    run_eagerly,
)
from cpu_kernels.folded_batchnorm import (
    affine,
    batch_norm_gradients,
    batch_statistics,
    out_gradients,
    out_of_affine,
    through_relu_and_norm,
)


def _apply(layers, x):
    """x through ``layers`` in order."""
    for layer in layers:
        x = layer(x)
    return x


def _with_batch_stats(layers, x):
    """x through ``layers``, BatchNorm2d with the batch's statistics and no
    running-statistics update (a recomputation of a training forward)."""
    for layer in layers:
        if isinstance(layer, torch.nn.BatchNorm2d):
            x = F.batch_norm(
                x, None, None, layer.weight, layer.bias, True, 0.0, layer.eps
            )
        else:
            x = layer(x)
    return x


def _add(grads, param, grad):
    """Accumulates ``grad`` into ``grads[param]``."""
    grads[param] = grads.get(param, 0) + grad


class _Decoder(torch.autograd.Function):
    """A ``ChunkedDecoder``'s layers up to its last convolution, in
    training (see the module's docstring)."""

    @staticmethod
    def forward(ctx, h, decoder, *params):
        body, last, (up, _, bn, out) = decoder.parts()
        ctx.head, ctx.bn3 = None, (None, None)  # x = a3 r + c3
        with torch.no_grad():
            r = _apply(body, h)  # updates body's running statistics
            if last:  # r = relu(conv3(body(h))), x = bn3(r)
                conv3, _, bn3 = last
                r = conv_transpose(conv3, r, conv3.weight, conv3.bias).relu_()
                mean3, invstd3, _ = batch_statistics(bn3, [r])
                a3 = bn3.weight * invstd3
                ctx.head, ctx.bn3 = (
                    (mean3, invstd3),
                    (a3, bn3.bias - mean3 * a3),
                )
            ys = [
                conv_transpose(
                    up, affine(x, *ctx.bn3), up.weight, up.bias
                ).relu_()
                for x in r.split(decoder.piece)
            ]
            mean, invstd, count = batch_statistics(bn, ys)
            a = bn.weight * invstd  # bn(y) = a y + c per channel
            c = bn.bias - mean * a
            result = out_of_affine(out, ys, a, c, out.bias)
        ctx.save_for_backward(h, mean, invstd, a, c)
        ctx.decoder, ctx.r, ctx.ys, ctx.count = decoder, r, ys, count
        return result

    @staticmethod
    def backward(ctx, g):
        h, mean, invstd, a, c = ctx.saved_tensors
        grads = {}
        gx = _tail_backward(ctx, g, mean, invstd, a, c, grads)
        del ctx.ys
        g_h = _head_backward(ctx, h, gx, ctx.needs_input_grad[0], grads)
        params = zip(ctx.decoder.parameters(), ctx.needs_input_grad[2:])
        return (
            g_h,
            None,
            *(grads.get(p) if need else None for p, need in params),
        )


def _tail_backward(ctx, g, mean, invstd, a, c, grads):
    """Gradients of the last block's and the last convolution's parameters
    (into ``grads``) and of the head's output x, piece by piece (the
    arithmetic is ``folded_batchnorm``'s)."""
    decoder, ys = ctx.decoder, ctx.ys
    _, _, (up, _, bn, out) = decoder.parts()
    # pass 1: out's gradients and the sums BatchNorm's backward needs
    g_weight, g_bias, *sums = out_gradients(out, ys, g, a, c)
    _add(grads, out.weight, g_weight)
    _add(grads, out.bias, g_bias)
    g_gamma, g_beta, k_y, k_0 = batch_norm_gradients(
        bn, mean, invstd, ctx.count, *sums
    )
    _add(grads, bn.weight, g_gamma)
    _add(grads, bn.bias, g_beta)
    # pass 2: through BatchNorm, the ReLU and up, piece by piece
    weight_a = out.weight * a.view(-1, 1, 1, 1)
    gx, start = torch.empty_like(ctx.r), 0
    gs = g.split(decoder.piece)
    for i, piece in enumerate(ctx.r.split(decoder.piece)):
        gy = through_relu_and_norm(out, ys[i], gs[i], weight_a, k_y, k_0)
        ys[i] = None  # frees the piece
        piece = affine(piece, *ctx.bn3)
        gpiece, gw, gb = conv_transpose_grads(up, piece, up.weight, gy)
        del gy
        gx[start : start + len(piece)] = gpiece
        start += len(piece)
        _add(grads, up.weight, gw)
        _add(grads, up.bias, gb)
    return gx


def _head_backward(ctx, h, gx, need_h, grads):
    """The head's gradients (into ``grads``) for the gradient gx at its
    output x; returns h's gradient if ``need_h``. Its last block
    x = bn3(relu(conv3(x2))) is differentiated by hand from the kept
    r = relu(conv3(x2)); the layers before it (x2 = body(h)) are recomputed
    with autograd, their BatchNorm layers with the batch statistics."""
    body, last, _ = ctx.decoder.parts()
    if not last:
        return gx
    conv3, _, bn3 = last
    mean3, invstd3 = ctx.head
    r = ctx.r
    del ctx.r
    gr, g_gamma, g_beta = torch.ops.aten.native_batch_norm_backward(
        gx, r, bn3.weight, None, None, mean3, invstd3, True, bn3.eps, [True] * 3
    )
    del gx
    _add(grads, bn3.weight, g_gamma)
    _add(grads, bn3.bias, g_beta)
    torch.ops.aten.threshold_backward.grad_input(gr, r, 0, grad_input=gr)
    del r
    wanted = [
        p for layer in body for p in layer.parameters() if p.requires_grad
    ]
    with torch.enable_grad():
        h = h.detach().requires_grad_(need_h)
        x2 = _with_batch_stats(body, h)
    g_x2, gw, gb = conv_transpose_grads(conv3, x2.detach(), conv3.weight, gr)
    del gr
    _add(grads, conv3.weight, gw)
    _add(grads, conv3.bias, gb)
    inputs = ([h] if need_h else []) + wanted
    if not body or not inputs:
        return g_x2 if need_h else None
    found = torch.autograd.grad(x2, inputs, g_x2, allow_unused=True)
    for param, grad in zip(wanted, found[len(found) - len(wanted) :]):
        if grad is not None:
            _add(grads, param, grad)
    return found[0] if need_h else None


def _is_block(layers):
    """Whether ``layers`` are [ConvTranspose2d, ReLU, affine BatchNorm2d
    with running statistics]."""
    if len(layers) != 3:
        return False
    up, relu, bn = layers
    return (
        isinstance(up, torch.nn.ConvTranspose2d)
        and type(relu) is torch.nn.ReLU
        and type(bn) is torch.nn.BatchNorm2d
        and bn.affine
        and bn.track_running_stats
    )


def tail_start(layers):
    """Index of the last block in a decoder ``layers`` = blocks, then a
    ConvTranspose2d to one channel (then anything); None if not one."""
    for end in range(3, len(layers), 3):
        if not _is_block(layers[end - 3 : end]):
            return None
        out = layers[end]
        if isinstance(out, torch.nn.ConvTranspose2d) and out.out_channels == 1:
            biased = layers[end - 3].bias is not None and out.bias is not None
            return end - 3 if biased else None
    return None


class ChunkedDecoder(torch.nn.Sequential):
    """A decoder ``Sequential`` (same layers, same state_dict keys) whose
    last block runs ``piece`` clips at a time (see the module's docstring);
    in evaluation, piece by piece; in fp32 only (under autocast, or with
    another BatchNorm, the layers run as usual)."""

    def parts(self):
        """(the head's layers but its last block, the head's last block
        [conv3, ReLU, BatchNorm2d] or [] when the head is empty,
        [up, ReLU, BatchNorm2d, out])."""
        layers, start = list(self), self.tail_start
        body_end = max(start - 3, 0)
        return (
            layers[:body_end],
            layers[body_end:start],
            layers[start : start + 4],
        )

    def forward(self, x):
        """The layers in order, the last block and convolution in pieces."""
        body, last, tail = self.parts()
        norms = [block[2] for block in (last, tail) if block]
        if in_fp32(x) and all(type(n) is torch.nn.BatchNorm2d for n in norms):
            x = self._in_pieces(x)
        else:  # e.g. SyncBatchNorm, or bf16 autocast: speechbrain's way
            x = _apply(body + last + tail, x)
        return _apply(list(self)[self.tail_start + 4 :], x)

    def _in_pieces(self, x):
        """The head and the last block, in fp32 (see the module's
        docstring); in evaluation bn(y) = a y + c with its running
        statistics. Eager under torch.compile (``speed_up``)."""
        body, last, (up, relu, bn, out) = self.parts()
        if bn.training:
            return _Decoder.apply(x, self, *self.parameters())
        a = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        c = bn.bias - bn.running_mean * a
        pieces = _apply(body + last, x).split(self.piece)
        ys = (relu(up(piece)) for piece in pieces)
        return out_of_affine(out, ys, a, c, out.bias)


def speed_up(module, piece=0):
    """Gives every ``ConvTranspose2d`` of ``module`` the faster CPU kernels
    (``fast_convt``), makes the ReLUs that follow one in place, and, when
    ``piece`` > 0, makes every decoder ``Sequential`` a ``ChunkedDecoder``
    with pieces of ``piece`` clips. Parameters, buffers, hooks and
    state_dict keys do not change: only the layers' classes (and ReLU's
    ``inplace``). Returns ``module``."""
    run_eagerly(ConvTranspose2dCPU, "_fast")
    run_eagerly(ChunkedDecoder, "_in_pieces")
    for layer in list(module.modules()):
        if type(layer) is torch.nn.ConvTranspose2d:
            layer.__class__ = ConvTranspose2dCPU
        if type(layer) is not torch.nn.Sequential:
            continue
        for before, relu in zip(layer, list(layer)[1:]):
            if isinstance(before, torch.nn.ConvTranspose2d):
                if type(relu) is torch.nn.ReLU:
                    relu.inplace = True  # the convolution keeps no output
        if piece > 0 and tail_start(layer) is not None:
            layer.tail_start = tail_start(layer)
            layer.__class__ = ChunkedDecoder
            layer.piece = piece
    return module
