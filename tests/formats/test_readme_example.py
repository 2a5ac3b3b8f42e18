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
