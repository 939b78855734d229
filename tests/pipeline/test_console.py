"""What a run prints (enumdist/pipeline/console.py): known third-party noise filtered, one progress bar."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

from tests.pipeline.conftest import ROOT


def test_known_warnings_are_filtered_when_enabled_and_shown_when_not():
    """Each known message, raised through the channel its library uses, in a fresh interpreter."""
    script = textwrap.dedent("""
        import logging, sys, warnings
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *a, **k: print(message)
        from enumdist.pipeline.console import filter_known_warnings
        filter_known_warnings(sys.argv[1] == "on")
        warnings.warn("The `srun` command is available on your system but is not used. HINT: ...")
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning)
        logging.getLogger("pytorch_lightning.utilities.rank_zero").info("💡 Tip: For seamless cloud logging ...")
        logging.warning("Images sizes do not match. This will causes images to be display incorrectly in the UI.")
        warnings.warn("an unknown warning stays")
        logging.getLogger("pytorch_lightning.utilities.rank_zero").info("GPU available: False")
    """)
    outputs = {
        mode: subprocess.run(
            [sys.executable, "-c", script, mode],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={"PYTHONPATH": str(ROOT)},
        )
        for mode in ("on", "off")
    }
    for result in outputs.values():
        assert result.returncode == 0, result.stderr
    shown, filtered = outputs["off"].stdout.splitlines(), outputs["on"].stdout.splitlines()
    assert len(shown) == 6, shown
    assert filtered == ["an unknown warning stays", "GPU available: False"], filtered


def test_the_filter_is_installed_once(caplog):
    from enumdist.pipeline.console import _DropMatching, filter_known_warnings

    filter_known_warnings()
    filter_known_warnings()
    assert sum(isinstance(f, _DropMatching) for f in logging.getLogger().filters) == 1
