"""A quiet console: the known import-time warnings of detectron2 and fvcore are kept out of our
commands' output, and only those (pointrend_sem/console.py); the exporter's libraries log INFO
lines only with --verbose."""

import logging
import os
import sys
import warnings

import pytest
from conftest import REPO_ROOT, load_script, logging_left_as_found, run_command

from pointrend_sem.console import KNOWN_IMPORT_WARNINGS, known_import_warnings_silenced


def test_only_the_known_warning_is_silenced_and_only_inside():
    ((message, category, module),) = KNOWN_IMPORT_WARNINGS
    known = "`torch.jit.script` is deprecated. Please switch to `torch.compile`."
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with known_import_warnings_silenced():
            warnings.warn_explicit(known, category, "_script.py", 1, module="torch.jit._script")
            warnings.warn_explicit(known, category, "mine.py", 1, module="my_code")
            warnings.warn_explicit("something else", category, "_script.py", 2, module=module)
        warnings.warn_explicit(known, category, "_script.py", 1, module="torch.jit._script")
    shown = [(str(w.message)[:14], w.filename) for w in seen]
    assert shown == [(known[:14], "mine.py"), ("something else", "_script.py"),
                     (known[:14], "_script.py")]  # fmt: skip


@pytest.mark.slow(seconds=17)
def test_export_logs_library_info_only_when_verbose(tmp_path):
    """A command starts and exports without the import warnings (its first import is
    pointrend_sem, as in every entry point) and without the exporter's library INFO lines."""
    cmd = [sys.executable, "-W", "default", "tools/export_model.py"]
    cmd += ["--config-file", "configs/demo_synthetic.yaml"]
    cmd += ["--format", "onnx", "--height", "32", "--width", "32", "--runs", "1"]
    cmd += ["--output", str(tmp_path / "m.onnx"), "MODEL.WEIGHTS", ""]
    proc = run_command(cmd, check=True)  # a real export: no library INFO line, no warning
    info = [line for line in proc.stderr.splitlines() if line.startswith("INFO:")]
    assert info and all(line.startswith("INFO:pointrend_sem") for line in info), info
    assert "FutureWarning" not in proc.stderr, proc.stderr[-2000:]

    export_model = load_script(os.path.join(REPO_ROOT, "tools", "export_model.py"))
    library, ours = logging.getLogger("onnx_ir.passes"), logging.getLogger("pointrend_sem.x")
    with logging_left_as_found():
        for verbose in (False, True):
            export_model.configure_logging(verbose)
            assert library.isEnabledFor(logging.INFO) == verbose and ours.isEnabledFor(logging.INFO)
