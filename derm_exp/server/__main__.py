"""``python -m derm_exp.server start|stop|status``: the shared tracking server (see --help)."""

from __future__ import annotations

import argparse
import os
import sys

from derm_exp.errors import UserError

DESCRIPTION = """\
The shared tracking server for a lab: PostgreSQL (for MLflow and Optuna) and `mlflow server`
on it, serving the artifacts itself, so clients need only tracking.uri=http://HOST:PORT.
Data, artifacts, logs and the generated database credentials (mode 0600) live in one folder
(--dir; default $DERM_EXP_SERVER_DIR or <project>/server) and survive restarts. Both listen on
127.0.0.1 only unless --host / --db-host name another address. Started as root, PostgreSQL
runs as the unprivileged user 'postgres' (or --pg-user)."""

EPILOG = """\
examples:
  python -m derm_exp.server start                 # make server
  python -m derm_exp.server status
  python -m derm_exp.server stop                  # make server-stop
  python -m derm_exp.server start --port 5051 --db-port 5434
then:
  python -m derm_exp.train experiment=demo tracking.uri=http://127.0.0.1:5050
  export PGPASSFILE=<dir>/pgpass
  python -m derm_exp.train -m hparams_search=optuna tracking.uri=http://127.0.0.1:5050 \\
      hydra.sweeper.storage=postgresql+psycopg://derm@127.0.0.1:5433/optuna
Options given to `start` are saved in <dir>/server.json and reused by the next start."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m derm_exp.server",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir", help="server folder (default $DERM_EXP_SERVER_DIR or <project>/server)"
    )
    common.add_argument(
        "--pg-bin", help="folder of initdb/pg_ctl/postgres (default: /usr/lib/postgresql/<ver>/bin)"
    )
    common.add_argument("--pg-user", help="unprivileged user running PostgreSQL when root")
    sub = parser.add_subparsers(dest="action", required=True, metavar="start|stop|status")
    start = sub.add_parser(
        "start", parents=[common], help="start both (idempotent)", description="start both"
    )
    start.add_argument("--port", type=int, help="MLflow port (default 5050)")
    start.add_argument("--db-port", type=int, help="PostgreSQL port (default 5433)")
    start.add_argument(
        "--host",
        help="MLflow listen address (default 127.0.0.1; anything else is reachable from "
        "other machines, without authentication)",
    )
    start.add_argument(
        "--db-host", help="PostgreSQL listen address besides 127.0.0.1 (default: none)"
    )
    start.add_argument(
        "--allowed-hosts", help="extra Host headers MLflow accepts (comma-separated)"
    )
    sub.add_parser("stop", parents=[common], help="stop MLflow, then PostgreSQL")
    sub.add_parser("status", parents=[common], help="what runs; exit status 3 when stopped")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from derm_exp.server import control
    from derm_exp.server.layout import ServerDir

    where = ServerDir(args.dir)
    try:
        if args.action == "start":
            os.umask(0o077)  # logs, artifacts and credentials: for this user only
            settings = control.resolve_settings(
                where,
                port=args.port,
                db_port=args.db_port,
                host=args.host,
                db_host=args.db_host,
                allowed_hosts=args.allowed_hosts,
            )
            lines = control.start(where, settings, args.pg_bin, args.pg_user)
            code = 0
        elif args.action == "stop":
            lines, code = control.stop(where, args.pg_bin, args.pg_user), 0
        else:
            up, lines = control.status(where, args.pg_bin, args.pg_user)
            code = 0 if up else 3
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    print("\n".join(lines))
    return code


if __name__ == "__main__":
    sys.exit(main())
