"""The core imports without lightning (and without hypothesis, a test extra): paths, parameterization,
objectives, preconditioning, testing, samplers, distill, the captured training step."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

CORE = [
    "flowgen",
    "flowgen.paths",
    "flowgen.parameterization",
    "flowgen.objectives",
    "flowgen.preconditioning",
    "flowgen.testing",
    "flowgen.testing.oracles",
    "flowgen.capture",
]
OPTIONAL = ["flowgen.samplers", "flowgen.distill"]  # core too, once they exist


def _present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_core_imports_without_lightning_or_hypothesis():
    modules = CORE + [m for m in OPTIONAL if _present(m)]
    code = textwrap.dedent(
        f"""
        import importlib, sys

        BLOCKED = ("lightning", "pytorch_lightning", "lightning_fabric", "hypothesis")

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked: the core must not import it")

        sys.meta_path.insert(0, Block())
        for name in {modules!r}:
            importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
        # the oracles work; the strategies (which need hypothesis) fail only when asked for
        import flowgen.testing as kit
        from flowgen.testing import *  # noqa: F401,F403 - star import needs no hypothesis
        assert kit.GaussianData and kit.GaussianMixture and kit.OracleModel
        try:
            kit.paths
        except ImportError as err:
            assert "hypothesis" in str(err), err
        else:
            raise SystemExit("flowgen.testing.paths resolved without hypothesis")
        print("imported", len({modules!r}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"imported {len(modules)}"


def test_the_blocker_really_blocks():
    """The check has teeth: importing lightning itself under the blocker fails."""
    code = textwrap.dedent(
        """
        import sys
        class BlockLightning:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("lightning", "pytorch_lightning"):
                    raise ImportError("blocked")
        sys.meta_path.insert(0, BlockLightning())
        try:
            import lightning  # noqa: F401
        except ImportError:
            print("blocked")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "blocked", out.stderr
