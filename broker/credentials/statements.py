"""The SQL a Vault/OpenBao database role runs to create and to revoke one session's login.

Every session logs in as a fresh role, yet an agent must meet the same owner for what it
made in an earlier session, and the role must always be droppable at revocation. So:

creation     the login is a member of the resource's group role and runs as it: its
             `role` setting defaults to the group, so `current_user` is the group and every
             object the session creates is owned by the group (`session_user` stays the login)
revocation   end the login's backends, then, if the login still exists, take membership in it
             (a CREATEROLE admin that is not a superuser has only ADMIN on the roles it made,
             and REASSIGN/DROP OWNED need the privileges of the role), give whatever it still
             owns to the group (`SET ROLE NONE` slipped past policy, say) and drop what is left
             (privileges granted to it), then drop it. The guard makes a retry after a partly
             applied revocation, or of a role somebody dropped already, succeed.

REASSIGN OWNED and DROP OWNED act on the database the statements run in: the Vault
connection must name the database sessions create objects in (one connection per database).
Vault runs the revocation statements in one transaction, so a failure leaves the login
whole and the lease outstanding, to be retried. OpenBao and Vault split a statement on `;`
unless it contains the word END, which is why the DO block is one element of its own.

The same list is written by infra/vault/bootstrap.sh and documented in infra/vault/README.md;
tests/infra/test_vault_bootstrap.py checks that all three agree.
"""

from __future__ import annotations

__all__ = ["creation_statements", "revocation_statements"]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def creation_statements(group: str) -> list[str]:
    """`{{name}}`, `{{password}}` and `{{expiration}}` are Vault's templates."""
    return [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' "
        f"IN ROLE {_ident(group)};",
        f"ALTER ROLE \"{{{{name}}}}\" SET role = {_literal(group)};",
    ]


def revocation_statements(group: str) -> list[str]:
    return [
        # End the login's backends first: a revoked lease must end access now, not at the
        # client's next reconnect.
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
        "DO $$ BEGIN IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{{name}}') THEN "
        "GRANT \"{{name}}\" TO CURRENT_USER; "
        f"REASSIGN OWNED BY \"{{{{name}}}}\" TO {_ident(group)}; "
        "DROP OWNED BY \"{{name}}\"; "
        "END IF; END $$;",
        'DROP ROLE IF EXISTS "{{name}}";',
    ]
