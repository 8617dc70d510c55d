"""`healthrobot dashboard`: serves the web dashboard, with /health and /metrics, until Ctrl-C or SIGTERM."""
from __future__ import annotations

import signal
import threading
from types import FrameType

import click

from robot.cli import Context, pass_context
from robot.clock import SystemClock
from robot.storage.database import make_sessionmaker


@click.command("dashboard")
@click.option("--host", help="Address to listen on (default: dashboard.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: dashboard.port, 8050; 0: any free port).")
@pass_context
def dashboard(ctx: Context, host: str | None, port: int | None) -> None:
    """Serve the web dashboard (and /health, /metrics) on the robot's database."""
    from dashboard.app import DashboardServer, create_app  # Dash is imported only when served

    ctx.require_current_schema()
    settings = ctx.config.dashboard
    app = create_app(ctx.config, make_sessionmaker(ctx.engine), SystemClock())
    host, port = host or settings.host, settings.port if port is None else port
    try:
        server = DashboardServer(app.server, host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}; another port: "
                                   f"`{ctx.command('dashboard', '--port', '0')}` (0: any free port)") from exc
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    click.echo(f"dashboard at {server.url}  (health: {server.url}/health, metrics: {server.url}/metrics)")
    if not settings.anonymous_read and not settings.trusted_user_header:
        click.echo(f"sign in with a user of the robot: {ctx.command('users', 'add', 'NAME', '--password-stdin')}")
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
        ctx.engine.dispose()
        click.echo("dashboard stopped")

