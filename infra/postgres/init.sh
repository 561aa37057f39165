#!/usr/bin/env bash
# Runs once, when the postgres container initialises its data directory
# (/docker-entrypoint-initdb.d): the store's database and login, and the `app` database
# jitgate fronts, with the two group roles that Vault-issued logins become members of.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v store_password="${JITGATE_STORE_PASSWORD:?set JITGATE_STORE_PASSWORD}" <<'SQL'
CREATE ROLE jitgate LOGIN PASSWORD :'store_password';
CREATE DATABASE jitgate OWNER jitgate;
CREATE DATABASE app;
CREATE ROLE app_readonly NOLOGIN;
CREATE ROLE app_readwrite NOLOGIN IN ROLE app_readonly;
SQL

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname app <<'SQL'
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO app_readonly;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_readonly;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO app_readonly;
GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_readwrite;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT INSERT, UPDATE, DELETE ON TABLES TO app_readwrite;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app_readwrite;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE ON SEQUENCES TO app_readwrite;
SQL
