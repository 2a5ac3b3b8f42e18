"""The README's property-testing example, run as written (a researcher's first contact)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_property_example_runs():
    text = README.read_text()
    block = re.search(r"## For researchers.*?```python\n(.*?)```", text, re.S).group(1)
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)  # noqa: S102 - our own README
    ns["test_kernel_matches_oracle"]()


def test_readme_define_your_own_format_runs():
    """The "Define your own format" block runs as written (it asserts its own results)."""
    from fmtlab.formats import unregister_format

    text = README.read_text()
    block = re.search(r"## Define your own format.*?```python\n(.*?)```", text, re.S).group(1)
    try:
        exec(compile(block, "README.md", "exec"), {})  # noqa: S102 - our own README
    finally:
        unregister_format("my3")
