"""`python -m servicekit.readme`: rewrite the README's configuration table from settings."""
from __future__ import annotations

import re
from pathlib import Path

from .settings import markdown_table


def main(path: Path = Path("README.md")) -> None:
    text = path.read_text()
    table = re.compile(r"\| variable \| default \| read by \| what it does \|\n(\|.*\|\n)+")
    path.write_text(table.sub(lambda _m: markdown_table() + "\n", text, count=1))


if __name__ == "__main__":
    main()
