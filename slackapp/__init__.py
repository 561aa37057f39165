"""jitgate's Slack side: approval prompts, votes by button, `/jit`, the App Home.

    settings.py   SlackSettings, the `slack:` configuration section
    ports.py      ApprovalActions and MessageLedger: what the app needs from the broker
    blocks.py     pure Block Kit builders: prompt (pending/decided), App Home, deny modal
    client.py     SlackPoster: post once (claimed in a MessageLedger), update in place;
                  make_web_client (bounded retries)
    app.py        build_app(settings, actions) -> slack_bolt AsyncApp
    listeners/    one module per surface: actions (buttons), views (deny modal), commands
                  (/jit), home (App Home); votes.py casts a vote and refreshes where it came from
    identity.py   Slack user -> profile email -> the broker's Voter
    middleware/   checks on requests: replay.py accepts each signed request once
    http.py       mount(fastapi_app, bolt_app): POST /slack/events
    socket.py     run_socket_mode(bolt_app, app_token)
    exceptions.py SlackError tree
"""
