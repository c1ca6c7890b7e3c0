"""``python -m runbook.checks --list``: every check, the scenarios that use it, its negative tests."""

from __future__ import annotations

import argparse
import sys

from runbook.checks.catalog import catalog, negative_exists, render


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runbook.checks", description=__doc__)
    ap.add_argument("--list", action="store_true", help="print every check with its scenarios and negative tests")
    args = ap.parse_args(argv)
    if not args.list:
        ap.print_help()
        return 2
    entries = catalog()
    print(render(entries))
    missing = [t for e in entries.values() for t in e.spec.negative if not negative_exists(t)]
    print(f"\n{len(entries)} checks; {sum(1 for e in entries.values() if e.scenarios)} used by scenarios; "
          f"{len(missing)} negative tests missing")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
