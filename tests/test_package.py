"""The package's import surface."""

import subprocess
import sys


def test_import_relgraph_gives_relgraph_rules():
    # a fresh interpreter: in this one another test may already have imported relgraph.rules
    code = "import relgraph; print(relgraph.rules.preset('base').name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "base"
