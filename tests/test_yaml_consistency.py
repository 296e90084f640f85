"""Every YAML is a documented, live configuration (cf. speechbrain's
tests/consistency/test_yaml.py): a header saying how to run it, required paths
as !PLACEHOLDER, and no key that nothing reads."""

import glob
import os
import re

import pytest

from conftest import ROOT

YAMLS = sorted(glob.glob(os.path.join(ROOT, "hparams", "*.yaml")))
CODE = "".join(
    open(path).read()
    for path in glob.glob(os.path.join(ROOT, "*.py"))
    + glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))
)


@pytest.mark.parametrize("path", YAMLS, ids=os.path.basename)
def test_yaml_header_and_placeholders(path):
    text = open(path).read()
    header = text.split("\n\n")[0]
    script = re.search(
        r"python (\w+\.py) hparams/" + re.escape(os.path.basename(path)), header
    )
    assert script, f"{path}: the header must give the run command"
    assert os.path.isfile(os.path.join(ROOT, script.group(1)))
    assert re.search(r"^data_folder: !PLACEHOLDER", text, re.M)


@pytest.mark.parametrize("path", YAMLS, ids=os.path.basename)
def test_every_yaml_key_is_used(path):
    text = open(path).read()
    keys = re.findall(r"^([A-Za-z_][A-Za-z0-9_]*):", text, re.M)
    dead = [
        key
        for key in keys
        if not key.startswith("__")
        and f"<{key}>" not in text
        and not re.search(rf"\b{key}\b", CODE)
    ]
    assert not dead, f"{path}: keys nothing reads: {dead}"
