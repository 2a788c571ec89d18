"""scripts/test.sh runs `pytest -n 2 --dist loadgroup`: the tests of one xdist_group must share a worker (the
C-kernel build, the packaging build and the docs' page server rely on it). pytest 9.2 with pytest-xdist 3.8
broke that silently; this runs a tiny suite the same way and checks."""
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("xdist")


def test_an_xdist_group_runs_on_one_worker(tmp_path):
    (tmp_path / "test_grouped.py").write_text(textwrap.dedent(f"""
        import os
        import pytest

        @pytest.mark.xdist_group("one")
        @pytest.mark.parametrize("i", range(6))
        def test_grouped(i):
            with open(os.path.join({str(tmp_path)!r}, f"worker_{{i}}"), "w") as f:
                f.write(os.environ["PYTEST_XDIST_WORKER"])

        @pytest.mark.parametrize("i", range(6))
        def test_free(i):
            pass
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
                             "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path / "test_grouped.py")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    workers = {(tmp_path / f"worker_{i}").read_text() for i in range(6)}
    assert len(workers) == 1, f"one xdist_group ran on workers {sorted(workers)}"
