"""The README's commands and CI agree: the README starts with exactly two
commands (the demo, the tests), and ``.ci/run`` runs the README's test
command verbatim, then the slow tier, so that CI runs every test not marked
``gpu``."""

import os
import re

from conftest import ROOT


def readme_commands():
    """The lines of the README's first code block."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_the_demo_and_the_tests():
    demo, tests = readme_commands()
    assert demo.startswith("bash setup.sh && ") and "demo.py" in demo
    assert tests.startswith("bash setup.sh --test && ") and "pytest" in tests


def test_ci_runs_the_readme_test_command_then_the_slow_tier():
    _, tests = readme_commands()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        lines = [line.strip() for line in f if not line.startswith("#")]
    assert tests in lines, "`.ci/run` must run the README's test command"
    assert '-m "not slow"' in tests
    after = lines[lines.index(tests) + 1 :]
    assert any(re.search(r"pytest .*-m slow tests", line) for line in after)
