"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {"__name__": "readme_example"})


def test_readme_setup_commands_match_ci():
    """The two set-up commands in the README are the ones .ci/run executes."""
    text = README.read_text()
    setup = re.search(r"## Set-up\s+```bash\n(.*?)```", text, flags=re.S).group(1).strip().splitlines()
    assert len(setup) == 2
    ci = (README.parent / ".ci" / "run").read_text()
    for command in setup:
        assert command in ci
