"""``python -m bench``: run every benchmark, print the figures, and record them in the docs.

Each benchmark runs in a fresh interpreter (``python -m bench.<name> --json``): memory figures
start from a clean process and no benchmark inherits another's threads, caches or heap. The
figures section of ``docs/BENCHMARKS.md`` (between its two markers) is rewritten only when every
benchmark ran, so the page never mixes figures of different runs.

Exit status: 0 when every benchmark ran and its correctness checks held (a missed target is
reported, not an error), 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.common import Figure, Result, machine, markdown_table

BENCHMARKS = (
    "loop_lag",
    "webhooks",
    "download_rss",
    "provider_fetch",
    "media_memory",
    "blob_s3_rss",
    "instances",
)
DOCS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
START = "<!-- figures:start (written by python -m bench; edits here are lost) -->"
END = "<!-- figures:end -->"
#: Each benchmark bounds itself well below this; it only catches a child that hangs outright.
CHILD_TIMEOUT = 900


def run_one(name: str) -> Result:
    """Run ``bench.<name>`` in a new interpreter and read its JSON result from the last line."""
    print(f"Running {name} …", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{name}", "--json"],
            stdout=subprocess.PIPE,
            text=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return _broken(name, f"it was stopped after {CHILD_TIMEOUT} s")
    lines = done.stdout.strip().splitlines()
    try:
        return Result.from_json(json.loads(lines[-1]))
    except (IndexError, ValueError, KeyError, TypeError):
        return _broken(name, f"it exited with status {done.returncode} and no result (see above)")


def _broken(name: str, why: str) -> Result:
    return Result(
        name=name, title=f"{name}: no figures", figures=(), notes=(why,), checks_passed=False
    )


def figures_section(
    results: Sequence[Result], when: datetime.datetime, facts: Mapping[str, str]
) -> str:
    """The generated part of the page: when, on what machine, a summary, then each benchmark."""
    summary: list[tuple[str, str, str]] = [("Benchmark", "Target", "Result")]
    for result in results:
        targeted: list[Figure] = [f for f in result.figures if f.target is not None]
        for figure in targeted:
            summary.append((result.title, f"{figure.label} {figure.goal()}", figure.shown()))
        if not targeted:
            verdict = "checks held" if result.checks_passed else "**a check failed**"
            summary.append((result.title, "correctness checks", verdict))
    parts = [
        f"Measured {when:%Y-%m-%d %H:%M} UTC with `.venv/bin/python -m bench`.",
        "",
        markdown_table([("Machine", ""), *facts.items()]),
        "",
        markdown_table(summary),
        "",
        *(result.report() + "\n" for result in results),
    ]
    return "\n".join(parts).rstrip() + "\n"


def rewrite_docs(section: str, path: Path = DOCS) -> None:
    """Put ``section`` between the page's markers, leaving the rest of the page as it is."""
    text = path.read_text(encoding="utf-8")
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"{path} has lost its figure markers; put back:\n{START}\n{END}")
    path.write_text(f"{head}{START}\n{section}{END}{tail}", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--no-docs", action="store_true", help=f"do not rewrite {DOCS.name}'s figures"
    )
    args = parser.parse_args(argv)
    names: list[str] = args.names or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"no benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    when = datetime.datetime.now(datetime.UTC)
    facts = machine()  # before running: the load average is the machine's, not ours
    results = [run_one(name) for name in names]
    section = figures_section(results, when, facts)
    print(section)
    if args.no_docs:
        pass
    elif set(names) == set(BENCHMARKS):
        rewrite_docs(section)
        print(f"Figures written to {DOCS}.", file=sys.stderr)
    else:
        print(f"Only some benchmarks ran: {DOCS.name} is left as it was.", file=sys.stderr)
    return 0 if all(result.checks_passed for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
