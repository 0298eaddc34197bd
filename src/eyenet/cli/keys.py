"""``eyenet keys``: create, list and revoke API keys (stored hashed in ``.eyenet/keys.db``, or where
``--store`` / ``EYENET_KEYS_URI`` say: a SQLite file or a postgresql:// URI)."""
from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from eyenet.cli.output import table


def add_parsers(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys (tenant and role per key)",
                          description="API keys of the HTTP API and the console. A key carries a tenant and a role "
                          "(reader, writer, operator, admin); it is shown once, when created, and stored hashed.")
    keys.add_argument("--store", default=None, metavar="URI",
                      help="the key store: a SQLite file or a postgresql:// URI, password in PGPASSWORD "
                      "(default: EYENET_KEYS_URI, else .eyenet/keys.db, as 'eyenet up' uses)")
    verbs = keys.add_subparsers(dest="verb", metavar="<verb>", required=True)
    create = verbs.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--role", required=True, choices=("reader", "writer", "operator", "admin"))
    create.add_argument("--name", default=None, help="a name for the key (default: <tenant>-<role>-<n>)")
    create.set_defaults(func=cmd_create)
    ls = verbs.add_parser("list", help="list keys (never their secrets)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    revoke = verbs.add_parser("revoke", help="revoke a key by id or name (refused within seconds everywhere)")
    revoke.add_argument("key", metavar="ID|NAME")
    revoke.set_defaults(func=cmd_revoke)


def _store(args: argparse.Namespace) -> Any:
    from eyenet.lifecycle.paths import home
    from eyenet.serving.auth import KeyStore, default_keys_uri

    return KeyStore(args.store or default_keys_uri(home()))


def audit_key(event: str, name: str, reason: str) -> None:
    """Record a key's creation or revocation (``audit.KEY_CREATE``/``KEY_REVOKE``) in the audit log,
    by whoever runs the command."""
    from eyenet.lifecycle import audit

    audit.AuditLog().append(audit.Event(event=event, name=f"key:{name}", version=None, reason=reason,
                                        actor=audit.default_actor(), time=datetime.now(UTC).timestamp()))


def cmd_create(args: argparse.Namespace) -> int:
    from eyenet.lifecycle import audit

    store = _store(args)
    name = args.name or f"{args.tenant}-{args.role}-{len(store.list()) + 1}"
    rec, key = store.create(name, args.tenant, args.role)
    audit_key(audit.KEY_CREATE, rec.name, f"tenant {rec.tenant}, role {rec.role}, id {rec.id}")
    print(key)
    print(f"# key {rec.name!r} (id {rec.id}): tenant {rec.tenant}, role {rec.role}. Shown once; send it as "
          "'Authorization: Bearer <key>'.", file=__import__("sys").stderr)
    return 0


def _when(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_list(args: argparse.Namespace) -> int:
    records = _store(args).list()
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
        return 0
    rows = [(r.id, r.name, r.tenant, r.role, _when(r.created), _when(r.last_used),
             "revoked " + _when(r.revoked) if r.revoked else "active") for r in records]
    print("\n".join(table(("id", "name", "tenant", "role", "created (UTC)", "last used", "state"), rows)))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from eyenet.lifecycle import audit

    rec = _store(args).revoke(args.key)
    audit_key(audit.KEY_REVOKE, rec.name, f"id {rec.id}, tenant {rec.tenant}, role {rec.role}")
    print(f"revoked key {rec.name!r} (id {rec.id})")
    return 0
