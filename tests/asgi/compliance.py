"""The kosoku suite (Autobahn's cases) through dwebsocket on the ASGI servers, sync and async
echo views: ``tests/compliance.py``'s run, pointed at ``tests/asgi``'s servers.

    python -m tests.asgi.compliance                       # categories 1-7 and 10, every server
    python -m tests.asgi.compliance --server uvicorn --kind async --cases '5.*'

The framing is the server's under ASGI: a failing case is the server's behaviour
(``docs/asgi.rst`` attributes each). Exits non-zero if a server printed a traceback or
the suite did not run; failing cases are reported, not fatal.
"""

from __future__ import annotations

import argparse
import sys

from tests import compliance
from tests.asgi.conftest import KINDS
from tests.servers import ASGI_SERVERS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", action="append", choices=sorted(ASGI_SERVERS))
    parser.add_argument("--kind", action="append", choices=sorted(KINDS))
    parser.add_argument("--cases", action="append", default=[], metavar="CASE")
    parser.add_argument("-p", "--parallelism", type=int, default=2)
    args = parser.parse_args(argv)
    cases = args.cases or compliance.FAST_CASES
    results = []
    default_settings = compliance.SETTINGS
    try:
        for name in args.server or list(ASGI_SERVERS):
            for kind in args.kind or list(KINDS):
                compliance.SETTINGS = {**default_settings, "ROOT_URLCONF": KINDS[kind]}
                result = compliance.run(name, cases, [], args.parallelism)
                result.server = f"{name}-{kind}"
                results.append(result)
    finally:
        compliance.SETTINGS = default_settings
    print(compliance.table(results))
    return 1 if any(r.error or r.traceback for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
