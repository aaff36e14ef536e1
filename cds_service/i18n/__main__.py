"""``python -m cds_service.i18n update|compile|check``: see :mod:`cds_service.i18n.catalogues`."""

from __future__ import annotations

import sys

from cds_service.i18n import catalogues


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command == "update":
        catalogues.update()
    elif command == "compile":
        catalogues.compile_all()
    elif command == "check":
        found = list(catalogues.problems())
        for line in found:
            print(line, file=sys.stderr)
        return 1 if found else 0
    else:
        print("usage: python -m cds_service.i18n update|compile|check", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
