"""``citybrain token``: API tokens (the secret is printed once)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)


def _catalog():  # type: ignore[no-untyped-def]
    from cloud.catalog import Catalog
    from cloud.core.config import get_settings

    return Catalog.open(get_settings())


@app.command("create")
def create(
    name: str = typer.Argument(..., help="user name the token acts as (e.g. the annotator)"),
    role: str = typer.Option(..., "--role", "-r", help="admin | operator | annotator | viewer"),
) -> None:
    """Create a token and print it (only its sha256 is stored: copy it now)."""
    from cloud.api.tokens import create_token
    from cloud.catalog.db import transaction

    with _catalog() as catalog, transaction(catalog.sessions) as session:
        row, plaintext = create_token(session, name, role)
        typer.echo(
            f"created token {row.id} for {row.name!r} ({row.role.value}); it is shown once:",
            err=True,
        )
    typer.echo(plaintext)


@app.command("list")
def list_() -> None:
    """List tokens (never their secrets)."""
    from cloud.api.tokens import list_tokens

    with _catalog() as catalog, catalog.sessions() as session:
        rows = list_tokens(session)
        if not rows:
            typer.echo("no tokens")
            return
        typer.echo(f"{'id':>4}  {'name':<24} {'role':<10} {'state':<8} created")
        for t in rows:
            state = "revoked" if t.revoked else "active"
            typer.echo(
                f"{t.id:>4}  {t.name:<24} {t.role.value:<10} {state:<8} "
                f"{t.created_at:%Y-%m-%d %H:%M}"
            )


@app.command("revoke")
def revoke(token: str = typer.Argument(..., help="token id, or its name if unique")) -> None:
    """Revoke a token (it is kept, marked revoked)."""
    from cloud.api.tokens import revoke_token
    from cloud.catalog.db import transaction

    with _catalog() as catalog, transaction(catalog.sessions) as session:
        row = revoke_token(session, token)
        typer.echo(f"revoked token {row.id} ({row.name}, {row.role.value})")
