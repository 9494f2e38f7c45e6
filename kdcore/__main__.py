"""Command line: `kdcore report ...` and `kdcore train ...` (also `python -m kdcore ...`, and under torchrun)."""
from __future__ import annotations

import sys

COMMANDS = {"report": "kdcore.report", "train": "kdcore.cli"}
HELP = """usage: kdcore {report,train} [options]

Knowledge distillation for image classifiers.

commands:
  report   run the notebooks with papermill and write HTML pages, an index and a leaderboard
           (kdcore report --profile smoke; kdcore report --help)
  train    train a student, alone or distilled from a teacher, and print its metrics as one JSON line
           (kdcore train --dataset synthetic --student student_light; kdcore train --help)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(HELP, end="")
        return 0
    if not argv or argv[0] not in COMMANDS:
        what = f"unknown command {argv[0]!r}" if argv else "no command given"
        print(f"error: {what}; use one of: {', '.join(COMMANDS)} (see kdcore --help)", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
