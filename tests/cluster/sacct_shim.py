#!/usr/bin/env python3
"""``sacct`` for the test cluster, which has no accounting database (slurmdbd needs MySQL).

Answers the queries submitit (``sacct -o JobID,State,NodeList --parsable2 -j ID ...``) and the
tests make from ``scontrol show job -o``: the controller keeps finished jobs for ``MinJobAge``
(600 s here). Array tasks are named ``<array id>_<task>`` as sacct names them. Plain Python,
no derm_exp import: SLURM's clients call it with any interpreter.
"""

import argparse
import subprocess
import sys


def jobs() -> list[dict[str, str]]:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o"], capture_output=True, text=True, check=False
    ).stdout
    found = []
    for line in out.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "JobId" not in fields:
            continue
        if "ArrayJobId" in fields and "ArrayTaskId" in fields:
            fields["JobID"] = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
        else:
            fields["JobID"] = fields["JobId"]
        fields["State"] = fields.get("JobState", "UNKNOWN")
        found.append(fields)
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sacct")
    parser.add_argument("-o", "--format", default="JobID,State,NodeList")
    parser.add_argument("-j", "--jobs", action="append", default=[])
    parser.add_argument("-n", "--noheader", action="store_true")
    parser.add_argument("-X", "--allocations", action="store_true")
    parser.add_argument("--parsable2", action="store_true")
    args = parser.parse_args(argv)
    columns = args.format.split(",")
    wanted = {j for group in args.jobs for j in group.split(",") if j}
    if not args.noheader:
        print("|".join(columns))
    for job in jobs():
        ids = {job["JobID"], job["JobId"], job.get("ArrayJobId", "")}
        if wanted and not ids & wanted:
            continue
        print("|".join(job.get(c, "") for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
