"""The GPU tier's parts that run without a GPU: benchmarks/gpu_benchmark.py's
command line and its exit without CUDA, and speechbrain's TF32 default that
tests/test_gpu.py's tolerances rely on. Not marked ``gpu``: these run (and
pass) on every machine."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

BENCHMARK = os.path.join(ROOT, "benchmarks", "gpu_benchmark.py")


def run(*args, env=None):
    """``python <args>`` from the recipe folder; the CompletedProcess."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=dict(os.environ, **(env or {})),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_gpu_benchmark_without_cuda_exits_2_with_one_line():
    """No CUDA device (none visible, whatever the machine has): status 2,
    one line on stderr saying so, nothing run."""
    done = run(BENCHMARK, env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("no CUDA device: ")
    assert done.stdout == ""


@pytest.mark.parametrize(
    "args,message",
    [
        (["--configs", "piq,cnn14"], "--configs: unknown ['cnn14']"),
        (["--steps", "1"], "--steps: give at least 2"),
        (["--device", "cpu"], "--device cpu: give a CUDA device"),
        (["--precision", "fp8"], "invalid choice: 'fp8'"),
    ],
)
def test_gpu_benchmark_rejects_bad_options(args, message):
    """Option errors come before the CUDA check, with argparse's status 2."""
    done = run(BENCHMARK, *args, env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_gpu_benchmark_parses_configs_and_yaml_overrides():
    """--configs as a list; any other --key value passed to every run."""
    sys.path.insert(0, os.path.dirname(BENCHMARK))
    import gpu_benchmark

    args = gpu_benchmark.parse_args(
        ["--configs", "piq,nmf", "--steps", "4", "--batch_size", "8"]
    )
    assert args.configs == ["piq", "nmf"] and args.steps == 4
    assert args.overrides == ["--batch_size", "8"]
    assert gpu_benchmark.batch_size("hparams/piq.yaml", args) == 8
    default = gpu_benchmark.parse_args([])
    assert default.configs == list(gpu_benchmark.CONFIGS)
    assert gpu_benchmark.batch_size("hparams/nmf.yaml", default) == 16


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"SB_DISABLE_QUIRKS": ""}, "True True"),
        ({"SB_DISABLE_QUIRKS": "allow_tf32"}, "False True"),
    ],
)
def test_speechbrain_turns_tf32_on_at_import(env, expected):
    """What test_gpu.py's STRICT_FP32 undoes: importing speechbrain sets
    TF32 for matmul and cuDNN (its ``allow_tf32`` quirk); without the quirk
    PyTorch's defaults stay (matmul off, cuDNN on, hence
    NVIDIA_TF32_OVERRIDE=0 there too)."""
    code = (
        "import speechbrain, torch; print(torch.backends.cuda.matmul."
        "allow_tf32, torch.backends.cudnn.allow_tf32)"
    )
    done = run("-c", code, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == expected
