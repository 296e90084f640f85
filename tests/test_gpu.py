"""The GPU tier: every method's tiny run on a CUDA device, compared with the
same checkpoint (or, for the methods that train nothing, the same run) on
the CPU; fp16 and bf16 autocast; interpret_file.py and
compare_interpreters.py on the GPU; torchrun with nccl on two GPUs.

Run on a machine with CUDA:

    .venv/bin/python -m pytest -m gpu -rs tests

Every test here is marked ``gpu`` and, without CUDA, reported as skipped
with the reason "no CUDA" (in that run and in the default ``pytest tests``):
none can pass without having run on a GPU. ``GPU_TESTS_ON_CPU=1`` runs them
on the CPU instead, to check these tests' own logic on a machine without a
GPU (the device comparisons then compare the CPU with itself; nccl and fp16
are skipped).

Why trained methods are compared on one checkpoint: a training run on the
GPU and one on the CPU start from the same weights (built on the CPU under
the YAML's seed) but do not stay together: dropout draws from the CUDA
generator, not the CPU's, and float rounding compounds over the steps. So a
method is trained on the GPU, tested there (and with ``--test_only`` there:
the same numbers), and that checkpoint is tested with ``--test_only
--device cpu``: what differs is only the device that evaluates it.

TF32. speechbrain 1.1.2 (this venv's) turns TF32 on when it is imported, not
in ``Brain``: ``speechbrain/core.py`` calls ``utils.quirks.apply_quirks()``,
whose ``allow_tf32`` quirk sets ``torch.backends.cuda.matmul.allow_tf32``
and ``torch.backends.cudnn.allow_tf32`` to True (PyTorch's own defaults are
False and True); ``SB_DISABLE_QUIRKS=allow_tf32`` skips it
(tests/test_gpu_tooling.py checks both). So every recipe script runs its
matmuls and convolutions in TF32 on an Ampere or later GPU unless told
otherwise. The device comparisons run the GPU side in full fp32
(``STRICT_FP32``: that variable, and ``NVIDIA_TF32_OVERRIDE=0``, which
cuBLAS and cuDNN honour whatever PyTorch asks, for cuDNN's own default);
``test_default_tf32_stays_close_to_the_cpu`` runs speechbrain's default.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import (
    N_CLASSES,
    ROOT,
    TINY,
    TINY_PIQ,
    classifier_args,
    replace_arg,
    run_script,
)
from interpret_gradients import ATTRIBUTIONS
from test_hf_backbones import QUICK, TINY_ARCH
from test_recipes import check_interpretations, check_test_metrics

DRY_RUN = os.environ.get("GPU_TESTS_ON_CPU") == "1"
DEVICE = "cpu" if DRY_RUN else "cuda:0"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (torch.cuda.is_available() or DRY_RUN), reason="no CUDA"
    ),
]

# The GPU side of a device comparison in full fp32 (module docstring).
STRICT_FP32 = {"SB_DISABLE_QUIRKS": "allow_tf32", "NVIDIA_TF32_OVERRIDE": "0"}

# One checkpoint tested twice on one device: evaluation has no random draw
# (but SmoothGrad's noise) and its kernels are deterministic; the CPU
# contract's own tolerance (test_recipes.py).
SAME_DEVICE = {"abs": 1e-5}
# One checkpoint tested in fp32 on the GPU (cuDNN, cuBLAS) and on the CPU
# (oneDNN, MKL): the same arithmetic summed in another order. Each float32
# operation rounds at ~6e-8 relative; through the reductions of the
# classifier and the decoder (a few thousand terms each) that grows to
# ~1e-6 relative in the logits and masks, and the metrics (means over 4
# clips of smooth functions of them) move by ~1e-5 relative. rel 1e-3 leaves
# a 100x margin for the two thresholds a rounding can cross: AMT's 0.90
# quantile (a bin within 1e-6 of it flips; one bin of 221k moves SPS or
# COMP by ~1e-5) and PIQ's nearest code; abs 1e-4 is for metrics near 0 (AG,
# faithfulness of the small cosine classifier, ~1e-2). Metrics that count
# decisions (accuracy, fidelity_in, AI, pointing_game) must be equal: a flip
# (0.25, or 25 for AI, on 4 clips) would need a probability within ~1e-6 of
# another.
ACROSS_DEVICES = {"rel": 1e-3, "abs": 1e-4}
# speechbrain's default on the GPU (TF32 on) against the CPU: TF32 rounds
# the operands of every matmul and convolution to a 10-bit mantissa (2^-11
# ~ 5e-4 relative) before accumulating in fp32, in the classifier (3-5
# layers) and the decoder alike: ~1e-3 relative on logits and masks, so
# ~1e-2 on the metrics; the decision counts may then flip and are not
# compared. An estimate, to be confirmed on the first GPU run.
DEFAULT_TF32 = {"rel": 3e-2, "abs": 3e-3}
# The stage's loss is not a metric of the masks: rec_loss_coef x BCE over
# every bin sums rounding that the metrics average away. The training run's
# test and --test_only of the same checkpoint differed by 3e-5 relative on
# the CPU (PIQ, metrics within 1e-5 as test_recipes.py checks: the weights
# of a trained module and of a freshly loaded one can differ in memory
# layout, hence in kernel and summation order). Always within:
LOSS = {"rel": 1e-3}
COUNTS = ("n_clips", "n_empty_masks")
DECISIONS = ("accuracy", "fidelity_in", "AI", "pointing_game")

GRADIENTS_QUICK = ["--n_steps", 3, "--nt_samples", 3, "--copies_per_pass", 2]
AMT_RANDOM = ["--use_pretrained", False]  # random ViT/FocalNet: same seed


@dataclass(frozen=True)
class Case:
    """A method's tiny run as the CPU tests make it: script, YAML, their
    overrides (with ``--device cpu``), whether it trains, whether it needs
    the trained conv2d classifier and an NMF dictionary."""

    script: str
    hparams: str
    tiny: tuple
    trains: bool = False
    classifier: bool = True
    nmf: bool = False
    random: bool = False  # draws noise in evaluation (SmoothGrad)


CASES = {
    "piq": Case("train_piq.py", "hparams/piq.yaml", tuple(TINY_PIQ), True),
    "l2i": Case(
        "train_l2i.py",
        "hparams/l2i_conv2d.yaml",
        (*TINY, "--out_n_neurons", N_CLASSES),
        True,
        nmf=True,
    ),
    "lmac": Case(
        "train_lmac.py",
        "hparams/lmac_conv2d.yaml",
        (*TINY, "--out_n_neurons", N_CLASSES),
        True,
    ),
    # as conftest.run_nmf
    "nmf": Case(
        "train_nmf.py",
        "hparams/nmf.yaml",
        ("--batch_size", 4, "--device", "cpu", "--noprogressbar"),
        True,
        classifier=False,
    ),
    # as test_hf_backbones.py and the DDP test of test_trust.py
    **{
        f"amt_{arch}": Case(
            "interpret_amt.py",
            f"hparams/amt_{arch}.yaml",
            (*QUICK, *TINY_ARCH[arch], *AMT_RANDOM),
            classifier=False,
        )
        for arch in ("focalnet", "vit")
    },
    # as test_gradients.py
    **{
        f"gradients_{attribution}": Case(
            "interpret_gradients.py",
            "hparams/gradients_conv2d.yaml",
            (
                *TINY,
                "--out_n_neurons",
                N_CLASSES,
                "--attribution",
                attribution,
                *GRADIENTS_QUICK,
            ),
            random=attribution == "smoothgrad",
        )
        for attribution in ATTRIBUTIONS
    },
}
TRAINED = [name for name, case in CASES.items() if case.trains]
TRAINING_FREE = [name for name, case in CASES.items() if not case.trains]


def run_case(name, request, out, device, *extra, env=None, **kwargs):
    """``CASES[name]``'s script on the generated data into ``out`` on
    ``device``, then ``extra`` (``run_script``'s keywords pass through)."""
    case = CASES[name]
    args = [*replace_arg(case.tiny, "device", device)]
    args += ["--data_folder", request.getfixturevalue("synthetic_data")]
    if case.classifier:
        args += classifier_args(request.getfixturevalue("trained_classifier"))
    if case.nmf:
        nmf = request.getfixturevalue("trained_nmf")
        args += ["--nmf_decoder_path", nmf / "nmf_decoder.ckpt"]
    args += ["--output_folder", out, *extra]
    return run_script(case.script, case.hparams, *args, env=env, **kwargs)


def read_test_metrics(name, folder):
    """The run's test_metrics.json, checked: every metric finite and every
    clip counted (NMF: its finite reconstruction error)."""
    if name == "nmf":
        results = json.loads((folder / "test_metrics.json").read_text())
        assert math.isfinite(results["reconstruction_error"])
        return results
    return check_test_metrics(folder)


def assert_metrics_close(actual, expected, tolerance, decisions=True):
    """The same keys; counts equal; decision counts equal (if
    ``decisions``); the loss within ``LOSS`` (or ``tolerance`` if wider);
    every other number within ``tolerance``."""
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        if key in COUNTS or not isinstance(value, (int, float)):
            assert actual[key] == value, key
        elif key in DECISIONS:
            if decisions:
                assert actual[key] == value, key
        elif key == "loss":
            loss = max(tolerance.get("rel", 0), LOSS["rel"])
            assert actual[key] == pytest.approx(value, rel=loss), key
        else:
            assert actual[key] == pytest.approx(value, **tolerance), key


def no_interpretations(name):
    """The override that skips saving interpretations (NMF has none)."""
    return [] if name == "nmf" else ["--save_interpretations", False]


@pytest.mark.parametrize("name", TRAINED)
def test_trained_method_on_gpu_then_the_checkpoint_on_cpu(
    name, request, tmp_path
):
    """Train 2 epochs on the GPU (fp32), test; ``--test_only`` on the GPU:
    the same numbers and the interpretations; that checkpoint tested on the
    CPU: the numbers within ``ACROSS_DEVICES``."""
    gpu = tmp_path / "gpu"
    train = ["--number_of_epochs", 2]
    run_case(
        name,
        request,
        gpu,
        DEVICE,
        *train,
        *no_interpretations(name),
        env=STRICT_FP32,
    )
    trained = read_test_metrics(name, gpu)
    proc = run_case(
        name, request, gpu, DEVICE, *train, "--test_only", env=STRICT_FP32
    )
    assert "Going into epoch" not in proc.stdout + proc.stderr
    retested = read_test_metrics(name, gpu)
    assert_metrics_close(retested, trained, SAME_DEVICE)
    if name != "nmf":
        check_interpretations(gpu)
    cpu = tmp_path / "cpu"
    shutil.copytree(gpu, cpu, symlinks=True)
    (cpu / "test_metrics.json").unlink()
    run_case(
        name,
        request,
        cpu,
        "cpu",
        *train,
        "--test_only",
        *no_interpretations(name),
    )
    assert_metrics_close(read_test_metrics(name, cpu), retested, ACROSS_DEVICES)


@pytest.mark.parametrize("name", TRAINING_FREE)
def test_training_free_method_on_gpu_and_cpu(name, request, tmp_path):
    """Validation and test on the GPU (fp32) with interpretations; then
    ``--test_only`` on the GPU (the same numbers) and on the CPU (within
    ``ACROSS_DEVICES``). SmoothGrad draws its noise from the device's
    generator (and validation draws first): only finite metrics."""
    run_case(name, request, tmp_path / "gpu", DEVICE, env=STRICT_FP32)
    assert "valid" in (tmp_path / "gpu" / "train_log.txt").read_text()
    first = read_test_metrics(name, tmp_path / "gpu")
    check_interpretations(tmp_path / "gpu")
    test_only = ["--test_only", *no_interpretations(name)]
    run_case(
        name,
        request,
        tmp_path / "gpu_test_only",
        DEVICE,
        *test_only,
        env=STRICT_FP32,
    )
    on_gpu = read_test_metrics(name, tmp_path / "gpu_test_only")
    run_case(name, request, tmp_path / "cpu_test_only", "cpu", *test_only)
    on_cpu = read_test_metrics(name, tmp_path / "cpu_test_only")
    if CASES[name].random:
        return
    assert_metrics_close(on_gpu, first, SAME_DEVICE)
    assert_metrics_close(on_cpu, on_gpu, ACROSS_DEVICES)


@pytest.mark.parametrize("name", ["piq", "amt_vit"])
def test_default_tf32_stays_close_to_the_cpu(name, request, tmp_path):
    """speechbrain's default on the GPU (TF32 on): a trained checkpoint, or
    a run that trains nothing, tested on the GPU then on the CPU; the
    continuous metrics within ``DEFAULT_TF32``."""
    gpu, cpu = tmp_path / "gpu", tmp_path / "cpu"
    extra = ["--number_of_epochs", 1] if CASES[name].trains else []
    extra += [*no_interpretations(name)]
    run_case(name, request, gpu, DEVICE, *extra)
    on_gpu = read_test_metrics(name, gpu)
    if CASES[name].trains:
        shutil.copytree(gpu, cpu, symlinks=True)
        (cpu / "test_metrics.json").unlink()
    run_case(name, request, cpu, "cpu", *extra, "--test_only")
    on_cpu = read_test_metrics(name, cpu)
    assert_metrics_close(on_cpu, on_gpu, DEFAULT_TF32, decisions=False)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize(
    "name", ["piq", "l2i", "lmac", "nmf", "amt_vit", "gradients_saliency"]
)
def test_mixed_precision_runs_finish_with_finite_metrics(
    name, precision, request, tmp_path
):
    """``--precision`` and ``--eval_precision`` fp16 (with speechbrain's
    GradScaler) or bf16 autocast: a run (1 epoch where the method trains)
    to its test, every metric finite."""
    if DRY_RUN:
        pytest.skip("GPU_TESTS_ON_CPU: autocast on the CPU is test_trust's")
    if precision == "bf16" and not torch.cuda.is_bf16_supported(
        including_emulation=False
    ):
        pytest.skip(f"{torch.cuda.get_device_name()} has no native bf16")
    extra = ["--precision", precision, "--eval_precision", precision]
    if CASES[name].trains:
        extra += ["--number_of_epochs", 1]
    run_case(name, request, tmp_path / "run", DEVICE, *extra)
    read_test_metrics(name, tmp_path / "run")


@pytest.fixture(scope="module")
def gpu_piq(request, tmp_path_factory):
    """A tiny PIQ run trained 1 epoch on the GPU (fp32)."""
    out = tmp_path_factory.mktemp("gpu_piq")
    run_case(
        "piq",
        request,
        out,
        DEVICE,
        "--number_of_epochs",
        1,
        "--save_interpretations",
        False,
        env=STRICT_FP32,
    )
    return out


@pytest.fixture
def fp32_in_process():
    """TF32 off in this process (speechbrain, imported, turned it on), then
    back as it was."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = False
    yield
    matmul.allow_tf32, cudnn.allow_tf32 = before


def test_interpret_file_on_gpu(gpu_piq, fp32_in_process, tmp_path):
    """interpret_file.py on a 12 s file (4 windows), batches of 2: the GPU's
    mask, interpretation and probabilities are the CPU's within
    ``ACROSS_DEVICES`` (absolute on [0, 1] masks and probabilities; the
    audio, peak about 1, likewise); in Python the interpreter runs on CUDA
    by default, and batches of 1 give one pass's results there too."""
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 12) / 16000
    wav = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    sf.write(tmp_path / "long.wav", wav, 16000)
    outputs = {}
    for device in (DEVICE, "cpu"):
        out = tmp_path / device.replace(":", "_")
        run_script(
            "interpret_file.py",
            gpu_piq,
            tmp_path / "long.wav",
            "--output_folder",
            out,
            "--device",
            device,
            "--batch_size",
            2,
            env=STRICT_FP32,
        )
        folder = out / "long.wav"
        outputs[device] = (
            np.load(folder / "mask.npy"),
            sf.read(folder / "interpretation.wav")[0],
            json.loads((folder / "classes.json").read_text())["top_classes"],
        )
    (mask, audio, classes), (cpu_mask, cpu_audio, cpu_classes) = (
        outputs[DEVICE],
        outputs["cpu"],
    )
    assert mask.shape == (16000 * 12 // 186 + 1, 513)
    atol = ACROSS_DEVICES["abs"]
    np.testing.assert_allclose(mask, cpu_mask, atol=atol)
    np.testing.assert_allclose(audio, cpu_audio, atol=atol)
    cpu_probability = {c["class"]: c["probability"] for c in cpu_classes}
    for c in classes:
        assert c["probability"] == pytest.approx(
            cpu_probability[c["class"]], abs=atol
        )

    from interpret_file import AudioInterpreter

    interpreter = AudioInterpreter.from_hparams(str(gpu_piq))
    assert interpreter.brain.device == DEVICE  # the default: CUDA if any
    noise = rng.standard_normal(16000 * 3)
    wavs = [torch.from_numpy(x.astype("float32")) for x in (wav, noise)]
    whole = interpreter.interpret_batch(wavs)
    interpreter.batch_size = 1
    for one, alone in zip(whole, interpreter.interpret_batch(wavs)):
        np.testing.assert_allclose(alone["mask"], one["mask"], atol=atol)


def test_compare_interpreters_on_gpu(
    synthetic_data, trained_classifier, tmp_path
):
    """compare_interpreters.py --tiny --device cuda:0, as test_compare.py
    runs it: every method's row, the oracle's mass on the evidence."""
    out = tmp_path / "compare"
    methods = ("saliency", "uniform", "oracle")
    done = subprocess.run(
        [
            sys.executable,
            "compare_interpreters.py",
            "--data_folder",
            str(synthetic_data),
            "--output_folder",
            str(out),
            "--methods",
            ",".join(methods),
            "--classifier",
            f"conv2d={trained_classifier}",
            "--tiny",
            "--epochs",
            "1",
            "--seeds",
            "1",
            "--device",
            DEVICE,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    runs = json.loads(
        (out / "seed1" / "runs" / "oracle" / "test_metrics.json").read_text()
    )
    assert runs["evidence_mass"] == pytest.approx(1.0)
    table = (out / "comparison.csv").read_text().splitlines()
    assert len(table) == 1 + len(methods)
    assert (out / "gallery" / "index.html").is_file()


def without_device(args):
    """``args`` without ``--device`` and its value: under torchrun
    speechbrain then runs each process on cuda:<LOCAL_RANK>."""
    args = list(args)
    at = args.index("--device")
    return args[:at] + args[at + 2 :]


# torchrun: test_trust.py's DDP test with nccl on two GPUs
DDP_LAUNCHER = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node=2",
]


@pytest.mark.skipif(DRY_RUN, reason="GPU_TESTS_ON_CPU: nccl needs GPUs")
@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() < 2,
    reason="needs 2 GPUs",
)
@pytest.mark.parametrize("name", ["piq", "l2i", "amt_vit"])
def test_ddp_nccl_two_gpus(name, request, tmp_path):
    """torchrun with 2 nccl processes, one GPU each: validation and test
    clips each evaluated once (n_clips = the manifest's count), one log line
    per stage, one folder per test clip."""
    case = CASES[name]
    out = tmp_path / "ddp"
    args = [*without_device(case.tiny)]
    args += ["--data_folder", request.getfixturevalue("synthetic_data")]
    if case.classifier:
        args += classifier_args(request.getfixturevalue("trained_classifier"))
        args += ["--number_of_epochs", 1]
    if case.nmf:
        nmf = request.getfixturevalue("trained_nmf")
        args += ["--nmf_decoder_path", nmf / "nmf_decoder.ckpt"]
    run_script(
        case.script,
        case.hparams,
        *args,
        "--output_folder",
        out,
        "--distributed_backend",
        "nccl",
        launcher=DDP_LAUNCHER,
        env={"OMP_NUM_THREADS": "1"},
    )
    n_test = len(json.loads((out / "save" / "test.json").read_text()))
    n_valid = len(json.loads((out / "save" / "valid.json").read_text()))
    check_test_metrics(out, n_clips=n_test)
    check_interpretations(out, n_clips=n_test)
    log = (out / "train_log.txt").read_text().splitlines()
    valid = [line for line in log if " - valid " in line]
    test = [line for line in log if " - test " in line]
    assert len(valid) == 1 and f"valid n_clips: {n_valid}," in valid[0]
    assert len(test) == 1 and f"test n_clips: {n_test}," in test[0]
