"""The approvals console: server-rendered pages on the API app under /console.

    app.py          mounting, the session and CSRF dependencies, login/callback/logout
    auth.py         OIDC authorization code + PKCE client, the signed session cookie
    approvals.py    pending requests, one request, approve/deny (the API's rules)
    operations.py   live sessions, replay, audit log and export, health
    settings.py     the `console:` configuration section
    templates/, static/   Jinja2 templates, CSS and a small script (countdowns, polling)
"""
