#!/usr/bin/python3
"""`make chaos`: the chaos harness (harness.py) from the command line.

  tests/chaos/run_chaos.py [--seconds N] [--seed S] [--rate R] [--report FILE] [--workdir DIR]

Defaults come from CHAOS_SECONDS (600) and CHAOS_SEED (random, printed). Exit status 0 when
every check passed; the summary is printed and written as JSON (--report, default
build/chaos/report.json).
"""

import argparse
import os
import pathlib
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float,
                        default=float(os.environ.get("CHAOS_SECONDS", "600")))
    parser.add_argument("--seed", type=int,
                        default=int(os.environ["CHAOS_SEED"]) if os.environ.get("CHAOS_SEED")
                        else random.SystemRandom().randrange(1, 2**31))
    parser.add_argument("--rate", type=float, default=float(os.environ.get("CHAOS_RATE", "30")),
                        help="messages per second offered")
    parser.add_argument("--kinds", default=os.environ.get("CHAOS_KINDS", ""),
                        help="comma-separated fault kinds (default: all of harness.FAULT_KINDS)")
    parser.add_argument("--report", default="build/chaos/report.json")
    parser.add_argument("--workdir", default=None,
                        help="where the processes' directories go (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    pathlib.Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="backstop-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    kinds = tuple(k for k in args.kinds.split(",") if k) or harness.FAULT_KINDS
    unknown = set(kinds) - set(harness.FAULT_KINDS)
    if unknown:
        parser.error(f"unknown fault kinds {sorted(unknown)}; known: {harness.FAULT_KINDS}")
    summary = harness.run(workdir, args.seconds, args.seed, rate=args.rate, kinds=kinds,
                          report_path=args.report)
    if summary["ok"] and not args.keep:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    print("CHAOS", "PASSED" if summary["ok"] else "FAILED", f"seed={args.seed}", flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
