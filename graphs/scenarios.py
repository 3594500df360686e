"""Scenarios in and out of the store as JSON Lines, one `Scenario` record per line.

    python -m graphs.scenarios export --culture JPN --out jpn.jsonl [--db runs/clca.db]
    python -m graphs.scenarios import jpn.jsonl [--db runs/clca.db]
    python -m graphs.scenarios list --culture JPN [--db runs/clca.db]

Import validates the whole file before it writes anything, then stores it in one transaction: a bad
line stops the import with its line number and field, and nothing from that file is stored. A line
whose id is already stored with the same content is skipped; with different content it is an error,
so an import never overwrites a scenario that episodes may already refer to.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from agents import cli
from agents.records import Scenario, first_error
from graphs.store import DEFAULT_DB, Store, git_commit


class ScenarioFileError(ValueError):
    """A scenario file that cannot be read or imported; the message names the file, the line and the field."""


def read_numbered(path: str | Path) -> list[tuple[int, Scenario]]:
    """(line number, scenario) for every line of a JSON Lines file, validated; blank lines are allowed."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioFileError(f"{path}: cannot read: {exc}".replace("\n", " ")) from None
    numbered: list[tuple[int, Scenario]] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ScenarioFileError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        except (ValueError, RecursionError):  # a number past Python's digit limit, nesting past the stack
            raise ScenarioFileError(f"{where}: invalid JSON (a number too long or nesting too deep)") from None
        if not isinstance(data, dict):
            raise ScenarioFileError(f"{where}: expected a JSON object (a scenario), got {type(data).__name__}")
        try:
            scenario = Scenario.model_validate(data)
        except ValidationError as exc:
            raise ScenarioFileError(f"{where}: {first_error(exc)}") from None
        if scenario.id in first_line:
            raise ScenarioFileError(f"{where}: field id: {scenario.id!r} already on line {first_line[scenario.id]}")
        first_line[scenario.id] = number
        numbered.append((number, scenario))
    return numbered


def read_scenarios(path: str | Path) -> list[Scenario]:
    return [scenario for _, scenario in read_numbered(path)]


def import_scenarios(store: Store, path: str | Path, run_id: str | None = None) -> tuple[int, int]:
    """Validate a file, then store it whole; returns (stored, already present and identical)."""
    new, same = [], 0
    commit = git_commit()
    for number, scenario in read_numbered(path):
        row = store.scenario_record(scenario.id)
        if row is None or row.status != "ok":
            adapted_from = scenario.source.removeprefix("adapted:") if scenario.source.startswith("adapted:") else None
            new.append((scenario, {"seed_id": adapted_from, "model": None, "prompt_version": None, "attempts": 0,
                                   "run_id": run_id, "git": commit}))
        elif row.scenario == scenario:
            same += 1
        else:
            raise ScenarioFileError(
                f"{path}: line {number}: field id: {scenario.id!r} is already stored with different content "
                "(give the edited scenario a new id)"
            )
    store.import_scenarios(new)
    return len(new), same


def export_scenarios(store: Store, culture: str, out) -> int:
    """Write the culture's usable scenarios, one per line; returns how many."""
    scenarios = store.scenarios(culture=culture)
    for scenario in scenarios:
        out.write(scenario.to_json() + "\n")
    return len(scenarios)


def list_scenarios(store: Store, culture: str | None, out) -> None:
    """One line per stored row, failed adaptations included, with who made it and how."""
    for row in store.scenario_records(culture):
        made_by = f"{row.model} x{row.attempts}" if row.model else "imported or seed"
        why = f"  {row.error}" if row.error else ""
        out.write(f"{row.id}\t{row.status}\t{row.culture or '-'}\t{row.seed_id or '-'}\t{made_by}{why}\n")


def make_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m graphs.scenarios", description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write a culture's scenarios as JSON Lines")
    export.add_argument("--culture", required=True, help="ISO-3 code, e.g. JPN")
    export.add_argument("--out", required=True, help="file to write ('-' for standard output)")
    imp = commands.add_parser("import", help="validate a JSON Lines file and store all of it, or nothing")
    imp.add_argument("file")
    listing = commands.add_parser("list", help="stored scenarios with status, seed, model and error")
    listing.add_argument("--culture", default=None, help="ISO-3 code (default: every culture)")
    for sub in (export, imp, listing):
        sub.add_argument("--db", default=DEFAULT_DB, help="SQLite store")
    return p


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    if args.command != "import" and not Path(args.db).exists():
        sys.exit(f"error: {args.db}: no such store")
    with Store(args.db) as store:  # closed on every exit: no -wal is left beside the store
        if args.command == "export":
            culture = args.culture.upper()
            if args.out == "-":
                n = export_scenarios(store, culture, sys.stdout)
            else:
                out = Path(args.out)
                partial = out.with_name(out.name + ".partial")  # a crash never leaves half a file under the real name
                with open(partial, "w", encoding="utf-8") as f:
                    n = export_scenarios(store, culture, f)
                partial.replace(out)
            print(f"exported {n} {culture} scenarios to {args.out}", file=sys.stderr)
        elif args.command == "import":
            run_id = store.start_run("graphs.scenarios import " + args.file, {"file": args.file, "db": args.db})
            try:
                stored, same = import_scenarios(store, args.file, run_id)
            except ScenarioFileError as exc:
                store.finish_run(run_id, {"error": str(exc)})
                sys.exit(f"error: {exc}")
            store.finish_run(run_id, {"stored": stored, "unchanged": same})
            print(f"imported {stored} scenarios from {args.file} ({same} already stored unchanged)")
        else:
            list_scenarios(store, args.culture.upper() if args.culture else None, sys.stdout)


if __name__ == "__main__":
    main()
