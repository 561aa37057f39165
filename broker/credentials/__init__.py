"""Per-session upstream credentials: providers (static, Vault/OpenBao, local issuer), the
lease ledger and the reaper. Import the submodules; this package imports nothing eagerly,
because `broker.config` imports `broker.credentials.settings`.
"""
