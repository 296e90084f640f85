"""The speed and memory options give the same results (issue 13).

* ``cpu_kernels.fast_convt`` and ``cpu_kernels.chunked_decoder``: the faster
  transposed-convolution kernels and the chunked decoder against
  speechbrain's own layers, from the same weights: losses, gradients,
  BatchNorm running statistics and evaluation output;
* ``cpu_kernels.speed_up_if_cpu``: those kernels on a CPU in fp32 only
  (elsewhere psi keeps speechbrain's layers), and the brain asks for them
  with its own device and precisions;
* ``compile: True``: the compiled psi and classifier give the eager loss, and
  the recipe's brain compiles the frozen classifier when it is set.

Correctness only: the timings are the benchmark's (benchmarks/benchmark.py).
"""

import copy
import dataclasses
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from speechbrain.lobes.models.L2I import PsiOptimized
from speechbrain.lobes.models.PIQ import (
    VectorQuantizedPSI_Audio,
    VectorQuantizedPSIFocalNet_Audio,
    VectorQuantizedPSIViT_Audio,
)

import cpu_kernels
import interpreter_brain
import mask_decoders
from conftest import ROOT, tiny_piq_argv
from cpu_kernels import chunked_decoder, fast_convt
from experiment import make_brain, prepare_manifests, setup_experiment
from pretrained import load_classifier
from train_piq import PIQBrain

CL = torch.channels_last


def relative(a, b):
    """Largest absolute difference over the largest magnitude of b."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# kernel, stride, padding, output padding: psi's strided layers (PIQ on
# conv2d, FocalNet and ViT; L2I on CNN14) and the corners of ``_taps``
STRIDED = [
    ((4, 4), (2, 2), (1, 1), (0, 0)),
    ((3, 3), (2, 2), (1, 1), (1, 1)),
    ((4, 2), (2, 2), (1, 1), (0, 0)),
    ((4, 1), (2, 2), (1, 1), (0, 0)),
    ((3, 3), (4, 5), (1, 1), (0, 0)),
    ((7, 4), (2, 4), (1, 1), (0, 0)),
    ((4, 3), (2, 2), (0, 5), (0, 0)),
    ((7, 5), (1, 4), (0, 0), (0, 0)),
    ((2, 2), (3, 3), (0, 0), (2, 1)),
]


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize("kernel, stride, padding, out_padding", STRIDED)
def test_strided_weight_grad_is_atens(
    kernel, stride, padding, out_padding, layout
):
    """The per-tap matrix products give the weight gradient of ATen's
    kernel, in float64 to 1e-12, for every geometry of psi's strided
    layers, padding wider than the kernel and output padding included."""
    torch.manual_seed(0)
    x = torch.randn(3, 8, 5, 7, dtype=torch.float64)
    weight = torch.randn(8, 6, *kernel, dtype=torch.float64)
    y = F.conv_transpose2d(x, weight, None, stride, padding, out_padding)
    g = torch.randn_like(y).contiguous(memory_format=layout)
    x = x.contiguous(memory_format=layout)
    expected = torch.ops.aten.convolution_backward(
        g, x, weight, None, stride, padding, [1, 1], True, out_padding, 1,
        [False, True, False],
    )[1]  # fmt: skip
    got = fast_convt.strided_weight_grad(x, g, kernel, stride, padding)
    assert relative(got, expected) < 1e-12


@pytest.mark.parametrize(
    "shape, kernel, padding",
    [
        ((1, 16, 70, 9), 12, 1),
        ((3, 8, 5, 40), (3, 5), (0, 2)),
        ((2, 4, 33, 1), 1, 0),
    ],
)
def test_one_output_channel_in_row_blocks_is_atens(shape, kernel, padding):
    """The one-output-channel transposed convolution of channels_last data,
    made 32 input rows at a time (the last block shorter), equals ATen's."""
    torch.manual_seed(0)
    conv = torch.nn.ConvTranspose2d(shape[1], 1, kernel, 1, padding)
    x = torch.randn(shape).contiguous(memory_format=CL)
    with torch.no_grad():
        got = fast_convt.conv_transpose(conv, x, conv.weight, conv.bias)
        expected = F.conv_transpose2d(x, conv.weight, conv.bias, 1, padding)
    assert got.shape == expected.shape
    assert relative(got, expected) < 1e-5


def make_psi(method):
    """A narrow psi (8 channels); on a 2 x 32 map it gives 33 x 513 masks."""
    if method == "piq":
        return VectorQuantizedPSI_Audio(dim=8, K=12, numclasses=3)
    if method == "lmac":
        return mask_decoders.Conv2dMaskDecoder(dim=8)
    if method in ("piq_vit", "piq_focalnet"):  # their adapters, as the YAMLs
        psi_class = {
            "piq_vit": VectorQuantizedPSIViT_Audio,
            "piq_focalnet": VectorQuantizedPSIFocalNet_Audio,
        }[method]
        return psi_class(
            dim=8, K=12, numclasses=3, use_adapter=True, adapter_reduce_dim=True
        )
    return PsiOptimized(
        dim=8, K=10, numclasses=3, use_adapter=False, adapter_reduce_dim=False
    )


def layer_classes(psi):
    """(the set of the classes of psi's transposed convolutions, the class
    of its decoder)."""
    convs = psi.modules()
    return (
        {type(m) for m in convs if isinstance(m, torch.nn.ConvTranspose2d)},
        type(psi.decoder),
    )


# ``layer_classes`` of psi with the CPU kernels, and with speechbrain's layers
FAST = ({fast_convt.ConvTranspose2dCPU}, chunked_decoder.ChunkedDecoder)
SPEECHBRAINS = ({torch.nn.ConvTranspose2d}, torch.nn.Sequential)


def call(psi, method, hidden, labels):
    """psi's outputs, as a tuple whose first item is the mask (logits)."""
    if method.startswith("piq"):
        return psi(hidden, labels)
    out = psi(hidden)
    return out if isinstance(out, tuple) else (out,)


def train(psi, method, hidden, steps=2):
    """``steps`` Adam steps on a loss of psi's output (and, for PIQ, its
    codebook terms). Returns the losses, and after the first step's backward
    pass its gradients, the state_dict and psi's evaluation output."""
    labels = torch.arange(len(hidden)) % 3
    optimizer = torch.optim.Adam(psi.parameters(), lr=1e-3)
    losses = []
    for step in range(steps):
        out = call(psi, method, hidden, labels)
        loss = (out[0] - 0.1 * step).pow(2).mean() + 0.1 * out[0].abs().mean()
        if method.startswith("piq"):
            loss = (
                loss + F.mse_loss(out[2], out[1]) + F.mse_loss(out[1], out[2])
            )
        loss.backward()
        losses.append(loss.item())
        if step == 0:
            grads = {n: p.grad.clone() for n, p in psi.named_parameters()}
            state = copy.deepcopy(psi.state_dict())
            with torch.no_grad():
                evaluation = call(psi.eval(), method, hidden, labels)
            psi.train()
        optimizer.step()
        optimizer.zero_grad()
    return losses, grads, state, evaluation[0]


@pytest.mark.parametrize("piece", [0, 2])
@pytest.mark.parametrize(
    "method", ["piq", "piq_vit", "piq_focalnet", "l2i", "lmac"]
)
def test_fast_decoder_matches_speechbrains(method, piece):
    """Same initial weights, contiguous tensors: losses within 1e-5, every
    gradient within 1e-3 of its largest value (1e-6: those of a bias before
    a BatchNorm are rounding noise), running statistics and the evaluation
    output within 1e-4 (3 clips in pieces of 2 and 1). The state_dict keys
    are speechbrain's."""
    torch.manual_seed(0)
    psi = make_psi(method)
    hidden = torch.randn(3, 8, 2, 32)
    expected = train(copy.deepcopy(psi), method, hidden)
    fast = chunked_decoder.speed_up(psi, piece)
    chunked = type(fast.decoder) is chunked_decoder.ChunkedDecoder
    assert chunked == (piece > 0)
    losses, grads, state, evaluation = train(fast, method, hidden)
    assert losses == pytest.approx(expected[0], rel=1e-5)
    assert grads.keys() == expected[1].keys()
    for name, grad in grads.items():
        scale = expected[1][name].abs().max()
        error = (grad - expected[1][name]).abs().max()
        assert error <= 1e-3 * scale + 1e-6, name
    assert state.keys() == expected[2].keys()
    for name in [name for name in state if "running" in name]:
        assert relative(state[name], expected[2][name]) < 1e-4, name
    assert relative(evaluation, expected[3]) < 1e-4


def decoder_of(blocks, channels=6):
    """``blocks`` [ConvTranspose2d, ReLU, BatchNorm2d] blocks, then a
    ConvTranspose2d to one channel: psi's decoder, shorter and narrower."""
    layers = []
    for _ in range(blocks):
        layers += [
            torch.nn.ConvTranspose2d(channels, channels, 4, 2, 1),
            torch.nn.ReLU(),
            torch.nn.BatchNorm2d(channels),
        ]
    return torch.nn.Sequential(
        *layers, torch.nn.ConvTranspose2d(channels, 1, 5, 1, 1)
    )


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_chunked_decoder_with_any_head(blocks):
    """With no head (1 block), a head of one block (2) or of two (3), in
    channels_last, the input's gradient included: the chunked decoder's
    loss, every gradient and the running statistics within 2e-5 of the same
    layers in float64 (speechbrain's layers in fp32 channels_last are up to
    1.4e-4 off here)."""
    torch.manual_seed(0)
    plain = decoder_of(blocks)
    fast = chunked_decoder.speed_up(
        copy.deepcopy(plain).to(memory_format=CL), 2
    )
    assert type(fast) is chunked_decoder.ChunkedDecoder
    x = torch.randn(5, 6, 3, 4)
    results = []
    for decoder, h in (
        (plain.double(), x.double()),
        (fast, x.to(memory_format=CL)),
    ):
        h = h.clone().requires_grad_()
        loss = (decoder(h) - 0.3).pow(2).mean()
        loss.backward()
        grads = [h.grad] + [p.grad for p in decoder.parameters()]
        results.append((loss.item(), grads, decoder.state_dict()))
    (loss, grads, state), expected = results[1], results[0]
    assert loss == pytest.approx(expected[0], rel=1e-6)
    for grad, reference in zip(grads, expected[1]):
        assert relative(grad.double(), reference) < 2e-5
    for name in state:
        assert (
            relative(state[name].double(), expected[2][name].double()) < 2e-5
        ), name


def test_chunked_decoder_channels_last_is_closer_to_float64():
    """In channels_last, the layout the recipe trains in, the chunked
    decoder's loss is within 1e-5 of a float64 computation (torch's own
    channels_last BatchNorm2d is about 1e-3 off at full size)."""
    torch.manual_seed(0)
    psi = make_psi("l2i")
    hidden = torch.randn(3, 8, 2, 32)
    reference = train(copy.deepcopy(psi).double(), "l2i", hidden.double(), 1)
    fast = chunked_decoder.speed_up(psi.to(memory_format=CL), 2)
    losses = train(fast, "l2i", hidden.contiguous(memory_format=CL), 1)[0]
    assert losses == pytest.approx(reference[0], rel=1e-5)


def test_compiled_psi_gives_the_eager_loss():
    """torch.compile (graph capture and AOTAutograd, as ``compile: True``;
    the ``aot_eager`` backend leaves out Inductor's C++ build, a minute on 2
    cores) through the chunked decoder: the eager losses within 1e-6."""
    torch.manual_seed(0)
    psi = chunked_decoder.speed_up(make_psi("l2i"), 2)
    hidden = torch.randn(3, 8, 2, 32)
    expected = train(copy.deepcopy(psi), "l2i", hidden)[0]
    psi.compile(backend="aot_eager")
    assert train(psi, "l2i", hidden)[0] == pytest.approx(expected, rel=1e-6)


def test_kernels_run_eagerly_under_compile_once_applied():
    """``speed_up`` marks the fast transposed convolution and the chunked
    path to run eagerly under torch.compile (a graph break); importing a
    script does not import torch._dynamo (0.8 s at every start), which
    marking them at import did."""
    chunked_decoder.speed_up(make_psi("l2i"), 2)
    for cls, name in [
        (fast_convt.ConvTranspose2dCPU, "_fast"),
        (chunked_decoder.ChunkedDecoder, "_in_pieces"),
    ]:
        method = cls.__dict__[name]
        function = getattr(method, "__func__", method)  # a staticmethod's
        assert function.runs_eagerly and function._torchdynamo_disable, name
    imports = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, train_piq, train_l2i, "
            "train_lmac; print('torch._dynamo' in sys.modules)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert imports.stdout.strip() == "False"


@pytest.mark.parametrize("compile_flag", [False, True])
def test_brain_applies_the_yaml_speed_options(
    compile_flag, synthetic_data, trained_classifier, tmp_path
):
    """piq.yaml as train_piq.py builds it: psi's transposed convolutions get
    the fast kernels, its decoder is chunked (``decoder_piece: 1``), and the
    frozen classifier is compiled exactly when ``--compile`` is given
    (speechbrain compiles psi itself when fit starts)."""
    argv = tiny_piq_argv(synthetic_data, trained_classifier, tmp_path)
    hparams, run_opts = setup_experiment(argv + ["--compile"] * compile_flag)
    prepare_manifests(hparams)
    load_classifier(hparams)
    brain = make_brain(PIQBrain, hparams, run_opts)
    assert hparams["fast_decoder"] and hparams["decoder_piece"] == 1
    assert layer_classes(brain.modules.psi) == FAST
    assert brain.compile is compile_flag
    compiled = hparams["backbone"]._compiled_call_impl is not None
    assert compiled is compile_flag


def test_bf16_autocast_runs_speechbrains_layers():
    """Under bf16 autocast (``--precision bf16``) the fast, chunked decoder
    falls back to speechbrain's own computation: the same losses and
    gradients, bit for bit."""
    torch.manual_seed(0)
    psi = make_psi("l2i")
    hidden = torch.randn(3, 8, 2, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = train(copy.deepcopy(psi), "l2i", hidden)
        got = train(chunked_decoder.speed_up(psi, 2), "l2i", hidden)
    assert got[0] == expected[0]
    for name, grad in got[1].items():
        assert torch.equal(grad, expected[1][name]), name


@pytest.mark.parametrize(
    "device, precision, eval_precision, applied",
    [
        ("cpu", "fp32", "fp32", True),
        (torch.device("cpu"), "fp32", "fp32", True),
        ("cuda:0", "fp32", "fp32", False),
        ("cuda", "fp16", "fp16", False),
        ("cuda:1", "bf16", "bf16", False),
        ("meta", "fp32", "fp32", False),
        ("cpu", "bf16", "fp32", False),
        ("cpu", "fp32", "bf16", False),
        ("cpu", "bf16", "bf16", False),
    ],
)
def test_cpu_kernels_on_a_cpu_in_fp32_only(
    device, precision, eval_precision, applied, caplog
):
    """``speed_up_if_cpu`` gives psi the CPU kernels (chunked decoder
    included) on a CPU with fp32 training and evaluation only; on CUDA, on
    the meta device, in fp16 or bf16, psi keeps speechbrain's layers, and on
    a CPU the precision that rules them out is logged."""
    psi = make_psi("piq")
    assert cpu_kernels.applies(device, precision, eval_precision) is applied
    with caplog.at_level("INFO", logger="cpu_kernels"):
        got = cpu_kernels.speed_up_if_cpu(
            psi, 1, device, precision, eval_precision
        )
    assert got is psi
    assert layer_classes(psi) == (FAST if applied else SPEECHBRAINS)
    on_cpu = torch.device(device).type == "cpu"
    assert ("fp32 only" in caplog.text) == (on_cpu and not applied)


@pytest.mark.parametrize(
    "device, precision", [("meta", "fp32"), ("cpu", "bf16")]
)
def test_brain_asks_for_the_cpu_kernels_with_its_device(
    device,
    precision,
    synthetic_data,
    trained_classifier,
    tmp_path,
    monkeypatch,
):
    """piq.yaml (``fast_decoder: True``) on the meta device or in bf16: the
    brain passes its own device and precisions to ``speed_up_if_cpu``, and
    psi keeps speechbrain's layers."""
    calls = []

    def recorded(*args):
        """``speed_up_if_cpu``, its device and precisions recorded."""
        calls.append(args[2:])
        return cpu_kernels.speed_up_if_cpu(*args)

    monkeypatch.setattr(interpreter_brain, "speed_up_if_cpu", recorded)
    argv = tiny_piq_argv(synthetic_data, trained_classifier, tmp_path)
    hparams, run_opts = setup_experiment(argv + ["--precision", precision])
    # the command line accepts cpu and cuda:N only: meta stands in for a
    # GPU here, given to the Brain directly
    run_opts = dataclasses.replace(run_opts, device=device)
    prepare_manifests(hparams)
    load_classifier(hparams)
    brain = make_brain(PIQBrain, hparams, run_opts)
    assert calls == [(device, precision, "fp32")]
    assert layer_classes(brain.modules.psi) == SPEECHBRAINS


def test_sped_up_decoder_off_the_cpu_runs_speechbrains_layers(monkeypatch):
    """A decoder given the CPU kernels (``speed_up``, e.g. by hand) and then
    fed a tensor of another device computes speechbrain's way: neither the
    chunked path nor the fast transposed convolutions are entered (here on
    PyTorch's data-less ``meta`` device, as a CUDA tensor would be)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a CPU kernel ran off the CPU")

    psi = chunked_decoder.speed_up(make_psi("l2i"), 2).eval().to("meta")
    monkeypatch.setattr(chunked_decoder.ChunkedDecoder, "_in_pieces", refuse)
    monkeypatch.setattr(fast_convt, "conv_transpose", refuse)
    with torch.no_grad():
        out = psi(torch.randn(3, 8, 2, 32, device="meta"))
    out = out[0] if isinstance(out, tuple) else out
    assert out.device.type == "meta" and out.shape[0] == 3
