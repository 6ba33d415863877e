#!/usr/bin/env python3
"""Benchmark cachepi against nginx (the same bytes, served statically) and proxpi (under
gunicorn, as its image runs it), with a fake upstream index, all on 127.0.0.1.

    python -m bench.run            # full run (~10 minutes), writes bench/results/latest.md
    python -m bench.run --quick    # smoke run, writes bench/.work/quick.md
    python -m bench.run --profile  # also py-spy flame graphs of cachepi under load
    python -m bench.run --cluster  # also the cluster section (~2 more minutes), see below
    python -m bench.run --cluster-only  # only that section, spliced into latest.md
    python -m bench.run --pages-only [--against SRC]  # only the cached pages (section 2),
                                   # with another cachepi's src as a "before" column

from the repository root; `python bench/run.py ...` runs itself again that way. Misses of
a big file, one client and many, before and after a change: `python -m bench.misses`.

The cluster section (bench/scaleout.py) runs cachepi nodes sharing SeaweedFS's S3 gateway
(`.venv/bin/weed`, from the test extra) and a redis-server, on this same machine: a cached
50 MiB wheel through an S3 + Redis node vs a local-store node (wrk, 1 and 8 connections),
and 30 first requests for one uncached file at 3 nodes at once (upstream GETs, time until
the last client finished). Without `weed` or `redis-server` it is skipped, saying why.

Installs what is missing (Debian wrk and nginx-light, proxpi in bench/.work/proxpi-venv) and
stops every process it started, also on Ctrl-C. Runs under the project's .venv (with the
test extra: it shares the tests' helpers) when there is one.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--profile", action="store_true", help="py-spy cachepi under load")
    parser.add_argument("--output", type=Path, help="where to write the markdown results")
    parser.add_argument(
        "--cluster", action="store_true", help="also S3 + Redis nodes (SeaweedFS, redis-server)"
    )
    parser.add_argument(
        "--cluster-only",
        action="store_true",
        help="only the cluster section, replacing that of the results file",
    )
    parser.add_argument(
        "--pages-only",
        action="store_true",
        help="only the cached pages against nginx and bare aiohttp (bench/.work/pages.md)",
    )
    parser.add_argument(
        "--against",
        type=Path,
        help="with --pages-only: another cachepi's src directory, run side by side as before",
    )
    args = parser.parse_args()
    python = VENV / "bin" / "python"
    in_venv = Path(sys.prefix).resolve() == VENV.resolve() or not python.exists()
    if __package__ != "bench" or not in_venv:
        # As the module bench.run, from the root: `bench` and `tests` import as packages.
        os.chdir(ROOT)
        interpreter = sys.executable if in_venv else str(python)
        os.execv(interpreter, [interpreter, "-m", "bench.run", *sys.argv[1:]])
    from bench import harness

    try:
        if args.pages_only:
            against = args.against.resolve() if args.against else None
            return harness.main_pages_only(args.quick, args.output, against)
        if args.cluster_only:
            return harness.main_cluster_only(args.quick, args.output)
        return harness.main(args.quick, args.profile, args.output, args.cluster)
    except KeyboardInterrupt:
        print("\nbench: interrupted; every server it started has been stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
