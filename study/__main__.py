"""`python -m study plan|run|report`: a study's stages, run resumably, and its report.

    python -m study plan configs/studies/demo.yaml            # every stage with its counts; no model is loaded
    python -m study run configs/studies/demo.yaml --out runs/study-demo
    python -m study report runs/study-demo                     # report.md and results.csv from stored results
"""

from __future__ import annotations

import sys

from agents import cli


def make_parser():
    parser = cli.ArgumentParser(prog="python -m study", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("plan", help="every stage the study runs, with its counts (no model is loaded)")
    p.add_argument("config", help="study YAML (configs/studies/*.yaml)")
    r = commands.add_parser("run", help="run every stage not finished yet, then write the report")
    r.add_argument("config", help="study YAML (configs/studies/*.yaml)")
    r.add_argument("--out", default=None, help="the study's folder (default: runs/study-<name>)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars (logs, scripts)")
    rep = commands.add_parser("report", help="rebuild report.md and results.csv from a study folder")
    rep.add_argument("dir", help="a folder written by `python -m study run`")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    from study.config import StudyConfigError, load_study

    try:
        if args.command == "report":
            from study.report import StudyReportError, write_report

            try:
                paths = write_report(args.dir)
            except StudyReportError as exc:
                sys.exit(f"error: {exc}")
            print(paths["md"].read_text())
            return
        study = load_study(args.config)
        if args.command == "plan":
            from study.plan import describe, plan

            built, planned = plan(study)
            print(describe(study, planned, built))
            return
        from study.run import StudyRunError, run_study

        try:
            summary = run_study(study, args.out or f"runs/study-{study.name}", progress=not args.no_progress)
        except StudyRunError as exc:
            sys.exit(f"error: {exc}")
        print(summary["report"].read_text())
    except StudyConfigError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
