import subprocess
import sys

import pytest

PROBE = """
import sys
from cloostcodec.cli import main
try:
    main({args!r}, prog_name="cloost")
except SystemExit as exit:
    code = exit.code
assert code in (0, None), code
print("torch imported" if "torch" in sys.modules else "no torch")
"""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["compress", "--help"], ["bench", "--help"]])
def test_help_and_version_do_not_import_torch(args):
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "no torch"


def test_version_matches_package():
    import cloostcodec

    done = subprocess.run([sys.executable, "-m", "cloostcodec", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"cloost, version {cloostcodec.__version__}"
