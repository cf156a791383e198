"""The runtime package apart from its instruments: importing ``pointrend_sem`` loads no reference
implementation, neither mmsegmentation nor mmcv nor a stand-in for ``mmcv.ops`` put into
``sys.modules``; those live in ``tools/benchmarking/reference_models.py``."""

import sys

import pytest
from conftest import run_command

CHECK = (
    "import sys, pointrend_sem; "
    "assert not [m for m in sys.modules if m.startswith(('mmseg', 'mmcv'))]"
)


@pytest.mark.slow
def test_importing_the_package_loads_no_reference_implementation():
    proc = run_command([sys.executable, "-c", CHECK])
    assert proc.returncode == 0, proc.stderr[-3000:]
