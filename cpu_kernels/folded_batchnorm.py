"""A training-mode BatchNorm2d over a batch held in pieces, folded into the
one-output-channel transposed convolution that follows it (psi's last
layers), so that its output z = a y + c is never materialised; the
arithmetic of ``chunked_decoder``.

Per channel i, with mean m_i and 1 / sqrt(var_i + eps) s_i of y over the
whole batch (N values a channel), a_i = gamma_i s_i and c_i = beta_i - m_i a_i:

* forward: out(z) = out_{W a}(y) + out_{sum_i c_i W_i}(1) + bias, where
  out_V is the transposed convolution with weight V and (1) an all-ones
  map: the second term is one map for every clip;
* backward, for the output gradient g: out's input gradient at z is
  gz_i = sum_k W_ik g(. + k) (k over the kernel taps). Out's weight
  gradient is a G_y + c S, G_y its weight gradient at y and S at (1);
  BatchNorm's sums are sum(gz_i) = sum_k W_ik S_k and
  sum(gz_i y_i) = sum_k W_ik G_y,ik, so gz is computed only once, in the
  pass that needs it, and with the weight W a directly as a gz;
  then g_y = a gz + k_y y + k_0 with k_y and k_0 per channel.

Authors: the ESC-50 interpretability recipe developers.
"""

import torch

from cpu_kernels.fast_convt import conv_transpose, conv_transpose_grads


def per_channel(*values):
    """[C] tensors as [1, C, 1, 1] float32."""
    return [value.float().view(1, -1, 1, 1) for value in values]


def affine(r, a, c):
    """a r + c per channel ([C] a and c), or r itself when a is None."""
    if a is None:
        return r
    return torch.addcmul(c.view(1, -1, 1, 1), r, a.view(1, -1, 1, 1))


def channel_sums(y, rows=4096):
    """Per-channel sum and sum of squares of y [B, C, H, W], float64. On a
    channels_last y the squares are summed ``rows`` pixels at a time, so that
    no full-size temporary is allocated."""
    if not y.is_contiguous(memory_format=torch.channels_last):
        return y.sum((0, 2, 3)).double(), (y * y).sum((0, 2, 3)).double()
    pixels = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])  # a view
    squares = sum(
        block.square().sum(0).double() for block in pixels.split(rows)
    )
    return pixels.sum(0).double(), squares


def batch_statistics(bn, ys):
    """Training-mode statistics of the BatchNorm2d ``bn`` over the pieces
    ``ys`` together: updates its running statistics as ``BatchNorm2d`` does
    and returns the batch mean m, s = 1 / sqrt(var + eps) and the count N
    per channel."""
    count = sum(y.numel() // y.shape[1] for y in ys)
    sums = [channel_sums(y) for y in ys]
    mean = sum(s for s, _ in sums) / count
    var = sum(q for _, q in sums) / count - mean**2
    bn.num_batches_tracked.add_(1)
    momentum = bn.momentum
    if momentum is None:  # cumulative average
        momentum = 1 / float(bn.num_batches_tracked)
    unbiased = var * count / max(count - 1, 1)
    bn.running_mean.mul_(1 - momentum).add_(momentum * mean.float())
    bn.running_var.mul_(1 - momentum).add_(momentum * unbiased.float())
    return mean.float(), torch.rsqrt(var.float() + bn.eps), count


def out_of_affine(out, ys, a, c, bias):
    """``out`` (one output channel) at z = a y + c for each piece y of
    ``ys`` (an iterable), concatenated, without z (see the docstring)."""
    weight_a = out.weight * a.view(-1, 1, 1, 1)
    weight_c = (out.weight * c.view(-1, 1, 1, 1)).sum(0, keepdim=True)
    results, const = [], None
    for y in ys:
        if const is None:
            ones = y.new_ones(1, 1, *y.shape[-2:])
            const = conv_transpose(out, ones, weight_c, bias)
        results.append(conv_transpose(out, y, weight_a, None).add_(const))
    return torch.cat(results)


def out_gradients(out, ys, g, a, c):
    """Out's weight and bias gradients at z = a y + c for the output
    gradient g (the pieces of ``ys`` along g's batch), and BatchNorm's
    sums: sum(gz_i), sum(gz_i y_i) [C] float64."""
    ones = ys[0].new_ones(1, 1, *ys[0].shape[-2:])
    _, S, g_bias = conv_transpose_grads(
        out, ones, out.weight[:1], g.sum(0, keepdim=True), need_x=False
    )
    G_y = sum(
        conv_transpose_grads(out, y, out.weight, g_y, need_x=False)[1]
        for y, g_y in zip(ys, g.split(len(ys[0])))
    )
    g_weight = a.view(-1, 1, 1, 1) * G_y + c.view(-1, 1, 1, 1) * S
    W = out.weight.flatten(1).double()
    sum_gz = W @ S.flatten().double()
    sum_gz_y = (W * G_y.flatten(1).double()).sum(1)
    return g_weight, g_bias, sum_gz, sum_gz_y


def batch_norm_gradients(bn, mean, invstd, count, sum_gz, sum_gz_y):
    """BatchNorm's g_gamma = sum gz xhat and g_beta = sum gz, and [1, C, 1, 1]
    k_y, k_0 such that g_y = a (gz - g_beta / N - xhat g_gamma / N)
    = a gz + k_y y + k_0."""
    g_beta = sum_gz.float()
    g_gamma = ((sum_gz_y - mean.double() * sum_gz) * invstd.double()).float()
    scale = bn.weight * invstd / count
    k_y, k_0 = per_channel(
        -scale * invstd * g_gamma, -scale * (g_beta - mean * invstd * g_gamma)
    )
    return g_gamma, g_beta, k_y, k_0


def through_relu_and_norm(out, y, g, weight_a, k_y, k_0):
    """The gradient at the ReLU's input for the piece y = relu(.) and its
    output gradient g: threshold(a gz + k_y y + k_0), made in place in the
    one new map, gz's (``weight_a`` = W a)."""
    g_y = conv_transpose_grads(out, y, weight_a, g, need_w=False)[0]
    g_y.addcmul_(y, k_y).add_(k_0)
    return torch.ops.aten.threshold_backward.grad_input(
        g_y, y, 0, grad_input=g_y
    )
