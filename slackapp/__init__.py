"""jitgate's Slack side: approval prompts, votes by button, `/jit`, the App Home.

    settings.py   SlackSettings, the `slack:` configuration section
    ports.py      ApprovalActions: what the app needs from the broker (ApprovalService)
    blocks.py     pure Block Kit builders: prompt (pending/decided), App Home, deny modal
    client.py     SlackPoster: idempotent post/escalate, update; make_web_client (bounded retries)
    app.py        build_app(settings, actions) -> slack_bolt AsyncApp
    listeners/    one module per surface: actions (buttons), views (deny modal), commands
                  (/jit), home (App Home); votes.py casts a vote and refreshes where it came from
    identity.py   Slack user -> profile email -> the broker's Voter
    http.py       mount(fastapi_app, bolt_app): POST /slack/events
    socket.py     run_socket_mode(bolt_app, app_token)
    exceptions.py SlackError tree
"""
