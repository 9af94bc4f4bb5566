"""The edge runtime must import and run with TensorFlow (and Keras) absent."""

import subprocess
import sys
import textwrap

from tests.conftest import REPO, TINY_MODEL, import_blocker

BLOCKER = import_blocker(("tensorflow", "keras", "tf_keras"), ("marsseg.train", "marsseg.export"),
                         "the edge runtime must not need it")


def test_edge_imports_and_runs_without_tensorflow(tmp_path):
    code = BLOCKER + textwrap.dedent(f"""
        import pkgutil, importlib
        import marsseg.core, marsseg.edge
        for pkg in (marsseg.core, marsseg.edge):  # the runtime and the contract it shares with training
            for m in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(pkg.__name__ + "." + m.name)
        import numpy as np
        from marsseg.edge.model import TileModel
        from marsseg.edge.pipeline import Segmenter
        seg = Segmenter(TileModel({str(TINY_MODEL)!r}))
        out = seg(np.zeros((100, 200), np.uint8))
        assert out.mask.shape == (100, 200)
        assert not any(k.split(".")[0] in ("tensorflow", "keras") for k in sys.modules), "TF got imported"
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")


def test_edge_cli_runs_without_tensorflow(tmp_path):
    code = BLOCKER + textwrap.dedent(f"""
        import numpy as np, cv2
        cv2.imwrite({str(tmp_path / "a.png")!r}, np.full((70, 150), 90, np.uint8))
        from marsseg.edge.cli import main
        sys.exit(main([{str(tmp_path)!r}, {str(tmp_path / "out")!r}, "--model", {str(TINY_MODEL)!r}]))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "a.png").is_file()
