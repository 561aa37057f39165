#!/usr/bin/env bash
# Configure Vault or OpenBao for jitgate. Idempotent: every step is an upsert or is skipped
# when already done, so it can run at every deploy.
#
#   VAULT_ADDR=https://vault:8200 VAULT_TOKEN=<admin token> \
#   PG_HOST=db PG_DATABASE=app PG_ADMIN_USER=vault_admin PG_ADMIN_PASSWORD=... infra/vault/bootstrap.sh
#
# What it sets up:
#   <DB_MOUNT>/ (database engine)   connection <CONNECTION> to PG_DATABASE as PG_ADMIN_USER;
#                                   roles `readonly` and `readwrite`: each lease is a fresh
#                                   login, VALID UNTIL its expiry, member of READONLY_MEMBER_OF
#                                   or READWRITE_MEMBER_OF and running as it (so that group owns
#                                   what every session creates); revoking it ends the login's
#                                   backends, gives what it still owns to the group and drops it
#                                   (the statements: infra/vault/README.md)
#   policy <POLICY>                 exactly what the gateway calls (broker/credentials/vault.py):
#                                   read <DB_MOUNT>/creds/{readonly,readwrite}, update
#                                   sys/leases/renew and sys/leases/revoke, and renew its own
#                                   token; nothing else, not even Vault's `default` policy
#   auth/approle/role/<GATEWAY_ROLE>  the gateway's login, periodic token with POLICY; the
#                                   role_id/secret_id are APPROLE_ROLE_ID/APPROLE_SECRET_ID when
#                                   given, else generated and written to APPROLE_OUT (0600)
#   auth/jwt/role/<GATEWAY_ROLE>    the same policy for a workload JWT (e.g. a Kubernetes
#                                   service account token), configured when JWT_BOUND_AUDIENCE
#                                   and JWT_OIDC_DISCOVERY_URL or JWT_JWKS_URL are given
#
# Needs the `bao` or `vault` CLI (VAULT_CLI picks one); VAULT_ADDR/BAO_ADDR and
# VAULT_TOKEN/BAO_TOKEN are both understood.
set -euo pipefail

export VAULT_ADDR="${VAULT_ADDR:-${BAO_ADDR:-}}"
export VAULT_TOKEN="${VAULT_TOKEN:-${BAO_TOKEN:-}}"
: "${VAULT_ADDR:?set VAULT_ADDR (or BAO_ADDR) to the server address}"
: "${VAULT_TOKEN:?set VAULT_TOKEN (or BAO_TOKEN) to a token allowed to configure the server}"
export BAO_ADDR="$VAULT_ADDR" BAO_TOKEN="$VAULT_TOKEN"

VAULT_CLI="${VAULT_CLI:-$(command -v bao || command -v vault || true)}"
[[ -n "$VAULT_CLI" ]] || { echo "bootstrap: neither bao nor vault is on PATH (set VAULT_CLI)" >&2; exit 1; }

PG_HOST="${PG_HOST:?set PG_HOST}"
PG_PORT="${PG_PORT:-5432}"
# The database the gateway's sessions work in: revocation's REASSIGN OWNED / DROP OWNED act
# only on the database Vault is connected to (one connection per database).
PG_DATABASE="${PG_DATABASE:?set PG_DATABASE to the database the sessions of the gateway use (revocation reassigns what they own there)}"
# Vault logs in as this role: it needs LOGIN and CREATEROLE, ADMIN OPTION on the two member
# roles (to make logins members), pg_signal_backend (to end a revoked login's backends) and
# CONNECT on PG_DATABASE; not a superuser. On PostgreSQL 16+ it keeps the INHERIT attribute
# (the default): revocation grants it each login before REASSIGN OWNED (infra/vault/README.md).
PG_ADMIN_USER="${PG_ADMIN_USER:?set PG_ADMIN_USER}"
PG_ADMIN_PASSWORD="${PG_ADMIN_PASSWORD:?set PG_ADMIN_PASSWORD}"
PG_SSLMODE="${PG_SSLMODE:-require}"
READONLY_MEMBER_OF="${READONLY_MEMBER_OF:-app_readonly}"
READWRITE_MEMBER_OF="${READWRITE_MEMBER_OF:-app_readwrite}"
DB_MOUNT="${DB_MOUNT:-database}"
CONNECTION="${CONNECTION:-app}"
DEFAULT_TTL="${DEFAULT_TTL:-1h}"
MAX_TTL="${MAX_TTL:-24h}"
POLICY="${POLICY:-jitgate-gateway}"
GATEWAY_ROLE="${GATEWAY_ROLE:-jitgate}"
TOKEN_PERIOD="${TOKEN_PERIOD:-20m}"
APPROLE_ROLE_ID="${APPROLE_ROLE_ID:-}"
APPROLE_SECRET_ID="${APPROLE_SECRET_ID:-}"
APPROLE_OUT="${APPROLE_OUT:-}"
JWT_OIDC_DISCOVERY_URL="${JWT_OIDC_DISCOVERY_URL:-}"
JWT_JWKS_URL="${JWT_JWKS_URL:-}"
JWT_BOUND_AUDIENCE="${JWT_BOUND_AUDIENCE:-}"
JWT_BOUND_SUBJECT="${JWT_BOUND_SUBJECT:-}"

v() { "$VAULT_CLI" "$@"; }
log() { echo "bootstrap: $*" >&2; }

# `secrets list` / `auth list` print one mount per line, path first ("database/  database ...").
mounted() { local mounts; mounts="$(v "$1" list)"; awk -v m="$2/" 'NR > 2 && $1 == m {found = 1} END {exit !found}' <<<"$mounts"; }

# --- database secrets engine ---------------------------------------------------------------
if mounted secrets "$DB_MOUNT"; then
    log "secrets engine $DB_MOUNT/ already enabled"
else
    v secrets enable -path="$DB_MOUNT" database >/dev/null
    log "enabled secrets engine $DB_MOUNT/"
fi

# The templated user/password stay literal: Vault substitutes them, and never shows the
# password back. Rotate it away from what this script was given with
# `vault write -f $DB_MOUNT/rotate-root/$CONNECTION` once (then this script needs the new one).
v write "$DB_MOUNT/config/$CONNECTION" \
    plugin_name=postgresql-database-plugin \
    allowed_roles="readonly,readwrite" \
    connection_url="postgresql://{{username}}:{{password}}@${PG_HOST}:${PG_PORT}/${PG_DATABASE}?sslmode=${PG_SSLMODE}" \
    username="$PG_ADMIN_USER" \
    password="$PG_ADMIN_PASSWORD" \
    verify_connection=true >/dev/null
log "configured connection $CONNECTION ($PG_HOST:$PG_PORT/$PG_DATABASE)"

# The statements, one JSON array element each (a `key=value` argument would be split at
# commas). Identical to broker/credentials/statements.py; infra/vault/README.md explains them.
json_str() { local s="${1//\\/\\\\}"; printf '"%s"' "${s//\"/\\\"}"; }
ident() { printf '"%s"' "${1//\"/\"\"}"; }
literal() { local q="'"; printf "'%s'" "${1//$q/$q$q}"; }
role_json() {
    local group_id group_lit
    group_id="$(ident "$1")"
    group_lit="$(literal "$1")"
    local create=(
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE ${group_id};"
        "ALTER ROLE \"{{name}}\" SET role = ${group_lit};"
    )
    local revoke=(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';"
        "DO \$\$ BEGIN IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{{name}}') THEN GRANT \"{{name}}\" TO CURRENT_USER; REASSIGN OWNED BY \"{{name}}\" TO ${group_id}; DROP OWNED BY \"{{name}}\"; END IF; END \$\$;"
        "DROP ROLE IF EXISTS \"{{name}}\";"
    )
    local c r
    c="$(json_str "${create[0]}"),$(json_str "${create[1]}")"
    r="$(json_str "${revoke[0]}"),$(json_str "${revoke[1]}"),$(json_str "${revoke[2]}")"
    printf '{"db_name": %s, "creation_statements": [%s], "revocation_statements": [%s], "default_ttl": %s, "max_ttl": %s}' \
        "$(json_str "$CONNECTION")" "$c" "$r" "$(json_str "$DEFAULT_TTL")" "$(json_str "$MAX_TTL")"
}
for role in readonly readwrite; do
    if [[ "$role" == readonly ]]; then member_of="$READONLY_MEMBER_OF"; else member_of="$READWRITE_MEMBER_OF"; fi
    role_json "$member_of" | v write "$DB_MOUNT/roles/$role" - >/dev/null
    log "role $role: logins run as $member_of"
done

# --- the gateway's policy ------------------------------------------------------------------
v policy write "$POLICY" - >/dev/null <<HCL
# jitgate gateway: issue, renew and revoke per-session database logins; nothing else.
path "${DB_MOUNT}/creds/readonly" {
  capabilities = ["read"]
}
path "${DB_MOUNT}/creds/readwrite" {
  capabilities = ["read"]
}
path "sys/leases/renew" {
  capabilities = ["update"]
}
path "sys/leases/revoke" {
  capabilities = ["update"]
}
# The gateway keeps its periodic token alive: leases die with the token that made them.
path "auth/token/renew-self" {
  capabilities = ["update"]
}
HCL
log "wrote policy $POLICY"

# --- AppRole login -------------------------------------------------------------------------
if mounted auth approle; then
    log "auth method approle/ already enabled"
else
    v auth enable approle >/dev/null
    log "enabled auth method approle/"
fi
v write "auth/approle/role/$GATEWAY_ROLE" \
    token_policies="$POLICY" \
    token_no_default_policy=true \
    token_period="$TOKEN_PERIOD" \
    secret_id_ttl=0 \
    token_type=service >/dev/null
if [[ -n "$APPROLE_ROLE_ID" ]]; then
    v write "auth/approle/role/$GATEWAY_ROLE/role-id" role_id="$APPROLE_ROLE_ID" >/dev/null
fi
role_id="$(v read -field=role_id "auth/approle/role/$GATEWAY_ROLE/role-id")"
if [[ -n "$APPROLE_SECRET_ID" ]]; then
    # Captured first: `cmd | grep -q` under pipefail fails when grep exits early (SIGPIPE).
    lookup="$(v write -format=json "auth/approle/role/$GATEWAY_ROLE/secret-id/lookup" \
        secret_id="$APPROLE_SECRET_ID" 2>/dev/null || true)"
    if [[ "$lookup" == *'"secret_id_accessor"'* ]]; then
        log "approle $GATEWAY_ROLE: the given secret_id is already registered"
    else
        v write "auth/approle/role/$GATEWAY_ROLE/custom-secret-id" secret_id="$APPROLE_SECRET_ID" >/dev/null
        log "approle $GATEWAY_ROLE: registered the given secret_id"
    fi
elif [[ -n "$APPROLE_OUT" && -s "$APPROLE_OUT" ]]; then
    log "approle $GATEWAY_ROLE: $APPROLE_OUT exists, no new secret_id issued"
elif [[ -n "$APPROLE_OUT" ]]; then
    secret_id="$(v write -f -field=secret_id "auth/approle/role/$GATEWAY_ROLE/secret-id")"
    (umask 077 && printf 'JITGATE_VAULT__AUTH__ROLE_ID=%s\nJITGATE_VAULT__AUTH__SECRET_ID=%s\n' \
        "$role_id" "$secret_id" >"$APPROLE_OUT")
    log "approle $GATEWAY_ROLE: wrote role_id and a new secret_id to $APPROLE_OUT"
else
    log "approle $GATEWAY_ROLE: role_id $role_id; issue a secret_id with" \
        "'vault write -f auth/approle/role/$GATEWAY_ROLE/secret-id' (or set APPROLE_OUT)"
fi

# --- JWT login (workload identity) ---------------------------------------------------------
if mounted auth jwt; then
    log "auth method jwt/ already enabled"
else
    v auth enable jwt >/dev/null
    log "enabled auth method jwt/"
fi
if [[ -n "$JWT_BOUND_AUDIENCE" && ( -n "$JWT_OIDC_DISCOVERY_URL" || -n "$JWT_JWKS_URL" ) ]]; then
    if [[ -n "$JWT_OIDC_DISCOVERY_URL" ]]; then
        v write auth/jwt/config oidc_discovery_url="$JWT_OIDC_DISCOVERY_URL" >/dev/null
    else
        v write auth/jwt/config jwks_url="$JWT_JWKS_URL" >/dev/null
    fi
    jwt_args=(role_type=jwt user_claim=sub bound_audiences="$JWT_BOUND_AUDIENCE"
              token_policies="$POLICY" token_no_default_policy=true token_period="$TOKEN_PERIOD")
    [[ -z "$JWT_BOUND_SUBJECT" ]] || jwt_args+=(bound_subject="$JWT_BOUND_SUBJECT")
    v write "auth/jwt/role/$GATEWAY_ROLE" "${jwt_args[@]}" >/dev/null
    log "jwt role $GATEWAY_ROLE: audience $JWT_BOUND_AUDIENCE${JWT_BOUND_SUBJECT:+, subject $JWT_BOUND_SUBJECT}"
else
    log "jwt role not configured: set JWT_BOUND_AUDIENCE and JWT_OIDC_DISCOVERY_URL or JWT_JWKS_URL"
fi
log "done"
