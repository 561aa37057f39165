"""Identity (OIDC verification, the built-in dev issuer) and the access policy for grants.

    from broker.identity.oidc import OIDCVerifier, Principal, IdentityError
    from broker.identity.access import decide, AccessDecision
    from broker.identity.devissuer import DevIssuer, DevUser

Nothing is imported here: `broker.config` imports `broker.identity.settings`, and the
submodules stay importable without pulling each other in.
"""
