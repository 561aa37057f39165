"""`jitgate worker`: the Celery worker (with its beat schedule) for prompts, expiry and reaping.

It consumes only its installation's queue (`installation`, see `workers.app`), so deployments
that share one Redis never take each other's tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)


def worker(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Config file (default: $JITGATE_CONFIG)", show_default=False)
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Worker processes")] = 2,
    beat: Annotated[bool, typer.Option(help="Also run the periodic schedule (one worker per deployment)")] = True,
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "INFO",
) -> None:
    """Run the Celery worker: Slack prompts, reminders, expiry, lease revocation, audit export.

    It takes tasks only from its installation's queue (config key `installation`)."""
    import os

    from broker.config import load_settings
    from broker.exceptions import ConfigError

    if config is not None:
        os.environ["JITGATE_CONFIG"] = str(config)  # the tasks load the same file in each process
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    from workers.app import make_app, queue_for

    argv = [
        "worker", f"--concurrency={concurrency}", f"--loglevel={loglevel}", "--without-gossip", "--without-mingle",
        f"--queues={queue_for(settings.installation)}",
    ]
    if beat:
        schedule = Path(settings.data_dir) / "celerybeat-schedule"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", f"--schedule={schedule}"]
    make_app(settings).worker_main(argv)
