"""Manage accounts from the command line (on the server, with the app's settings).

python -m auth.users add NAME --role clinician     # asks for the password (or --password-stdin)
python -m auth.users passwd NAME                   # new password; revokes the user's sessions
python -m auth.users disable NAME | enable NAME
python -m auth.users role NAME researcher
python -m auth.users list
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from collections.abc import Sequence

from auth.db import ROLES, open_database
from auth.service import AuthService
from auth.tokens import TokenCodec, resolve_secret
from inference.errors import DoctorAIError
from settings import get_settings

log = logging.getLogger("auth.users")


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise SystemExit("the passwords differ")
    return first


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m auth.users", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    add = sub.add_parser("add", help="create a user")
    add.add_argument("username")
    add.add_argument("--role", choices=ROLES, default="clinician")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    pw = sub.add_parser("passwd", help="set a new password (revokes sessions and tokens)")
    pw.add_argument("username")
    pw.add_argument("--password-stdin", action="store_true")
    for name in ("disable", "enable"):
        sub.add_parser(name, help=f"{name} an account").add_argument("username")
    role = sub.add_parser("role", help="change a user's role")
    role.add_argument("username")
    role.add_argument("role", choices=ROLES)
    sub.add_parser("list", help="list users")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    settings = get_settings()
    db = open_database(settings.resolved_database_url)
    service = AuthService(settings, db, TokenCodec(resolve_secret(settings)))
    out = sys.stdout
    try:
        if args.cmd == "add":
            u = service.create_user(args.username, _password(args), args.role)
            out.write(f"created {u.username} ({u.role})\n")
        elif args.cmd == "passwd":
            service.set_password(args.username, _password(args))
            out.write(f"password changed for {args.username}; their sessions and tokens are revoked\n")
        elif args.cmd in ("disable", "enable"):
            service.set_active(args.username, args.cmd == "enable")
            out.write(f"{args.username} {args.cmd}d\n")
        elif args.cmd == "role":
            service.set_role(args.username, args.role)
            out.write(f"{args.username} is now {args.role}\n")
        else:
            out.write(f"{'username':<24} {'role':<11} {'active':<7} {'login':<12} last login\n")
            for u in service.list_users():
                last = u.last_login_at.isoformat(timespec="seconds") if u.last_login_at else "-"
                out.write(f"{u.username:<24} {u.role:<11} {u.active!s:<7} {u.sso_provider or 'password':<12} {last}\n")
    except DoctorAIError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 2
    finally:
        db.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
