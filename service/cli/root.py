"""The root `tuneplane` command: its options, the command groups in the order `--help`
lists them, and the commands that run the service here (`db upgrade`, `serve`, `up`)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy.engine import make_url

from service.cli.admin import admin_app
from service.cli.client import ClientOptions
from service.cli.demo import demo
from service.cli.deployments import deployments_app
from service.cli.files import files_app
from service.cli.jobs import jobs_app
from service.cli.login import login
from service.cli.models import models_app
from service.cli.secrets import secrets_app
from service.cli.usage import usage
from service.cli.webhooks import webhooks_app
from service.config import Settings, get_settings

app = typer.Typer(
    help="Tuneplane: self-hosted fine-tuning with an OpenAI-compatible API.",
    no_args_is_help=True,
)
db_app = typer.Typer(help="Database schema.")
app.add_typer(db_app, name="db")
app.command("login")(login)
app.add_typer(files_app, name="files")
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")
app.add_typer(deployments_app, name="deployments")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(secrets_app, name="secrets")
app.command("usage")(usage)
app.add_typer(admin_app, name="admin")
console = Console()


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option(help="Service URL for API commands (or TUNEPLANE_URL).")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="API key for API commands (or TUNEPLANE_API_KEY).")
    ] = None,
) -> None:
    ctx.obj = ClientOptions(url=url, api_key=api_key)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    from service import db

    settings = get_settings()
    db.upgrade(settings.database_url, revision)
    # Logs of a migrations Job are widely readable: never print the password.
    shown = make_url(settings.database_url).render_as_string(hide_password=True)
    console.print(f"database at {revision}: {shown}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
) -> None:
    """Run the API server alone (database and storage from TUNEPLANE_* settings)."""
    import uvicorn

    from service.main import KEEP_ALIVE_S

    # log_config=None: uvicorn's own lines go through the app's JSON logging.
    uvicorn.run(
        "service.main:create_app",
        factory=True,
        host=host,
        port=port,
        log_config=None,
        timeout_keep_alive=KEEP_ALIVE_S,
    )


@app.command()
def up(
    host: Annotated[str, typer.Option(help="Interface for the API.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the API.")] = 8000,
    data_dir: Annotated[
        Path | None, typer.Option(help="Database, artifacts, logs (default TUNEPLANE_DATA_DIR).")
    ] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs for the local Ray head.")] = None,
) -> None:
    """Run the whole stack: database, Redis, a local Ray head and the API; Ctrl-C stops all.

    Set TUNEPLANE_DATABASE_URL, _REDIS_URL, _RAY_ADDRESS or _STORAGE_URI to use an
    external one instead of starting it here."""
    from service.stack import run_up

    settings = Settings(data_dir=data_dir) if data_dir is not None else get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not settings.admin_key:
        key_file = settings.data_dir / "admin_key"
        if not key_file.exists():
            key_file.write_text(secrets.token_urlsafe(32))
            key_file.chmod(0o600)
        settings = settings.model_copy(update={"admin_key": key_file.read_text().strip()})
        console.print(f"admin key (from {key_file}): {settings.admin_key}")
    run_up(settings, host, port, num_cpus)


app.command()(demo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
