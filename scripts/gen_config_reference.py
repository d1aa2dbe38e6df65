#!/usr/bin/env python
"""Write docs/CONFIG.md from the config schemas (every key, type, default, range, doc).

    .venv/bin/python scripts/gen_config_reference.py           # write docs/CONFIG.md
    .venv/bin/python scripts/gen_config_reference.py --check   # exit 1 if docs/CONFIG.md is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def main(argv: list[str]) -> int:
    from anima.atomic import atomic_write_text
    from anima.config.reference import render

    out = ROOT / "docs" / "CONFIG.md"
    text = render()
    if "--check" in argv:
        if not out.is_file() or out.read_text() != text:
            print(f"{out} is out of date: run python scripts/gen_config_reference.py", file=sys.stderr)
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    print(f"wrote {out} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
