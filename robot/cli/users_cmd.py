"""`healthrobot users ...`: who may sign in to the dashboard (roles come from the configuration)."""
from __future__ import annotations

import json
import shlex
import sys

import click

from robot import users
from sqlalchemy.orm import Session

from robot.cli import Context, pass_context
from robot.clock import SystemClock


@click.group("users")
def users_group() -> None:
    """Dashboard sign-in accounts."""


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        users.check_password(password)
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from exc
    return password


def _session(ctx: Context, create: bool = False) -> Session:
    return ctx.session(create)


STDIN = click.option("--password-stdin", "from_stdin", is_flag=True,
                     help="Read the password from the first line of standard input instead of prompting.")


@users_group.command("add")
@click.argument("name")
@STDIN
@pass_context
def users_add(ctx: Context, name: str, from_stdin: bool) -> None:
    """Add a user who may sign in (the password is asked twice)."""
    password = _password(from_stdin)
    with _session(ctx, create=True) as session:
        try:
            users.add_user(session, name, password, SystemClock().now())
        except users.UserExists as exc:
            raise click.ClickException(f"{exc}; change their password with "
                                       f"`{ctx.command('users', 'passwd', shlex.quote(name))}`") from exc
        except users.UserError as exc:
            raise click.ClickException(str(exc)) from exc
        session.commit()
    click.echo(f"user {name} added")


@users_group.command("passwd")
@click.argument("name")
@STDIN
@pass_context
def users_passwd(ctx: Context, name: str, from_stdin: bool) -> None:
    """Set a user's password."""
    password = _password(from_stdin)
    with _session(ctx) as session:
        try:
            users.set_password(session, name, password)
        except users.UserError as exc:
            raise click.ClickException(str(exc)) from exc
        session.commit()
    click.echo(f"password of {name} changed")


@users_group.command("remove")
@click.argument("name")
@pass_context
def users_remove(ctx: Context, name: str) -> None:
    """Remove a user."""
    with _session(ctx) as session:
        try:
            users.remove_user(session, name)
        except users.UserError as exc:
            raise click.ClickException(str(exc)) from exc
        session.commit()
    click.echo(f"user {name} removed")


@users_group.command("disable")
@click.argument("name")
@pass_context
def users_disable(ctx: Context, name: str) -> None:
    """Stop a user from signing in, keeping the account; their dashboard sessions end."""
    _set_disabled(ctx, name, True)


@users_group.command("enable")
@click.argument("name")
@pass_context
def users_enable(ctx: Context, name: str) -> None:
    """Let a disabled user sign in again (sessions they had before stay ended)."""
    _set_disabled(ctx, name, False)


def _set_disabled(ctx: Context, name: str, disabled: bool) -> None:
    with _session(ctx) as session:
        try:
            users.set_disabled(session, name, disabled)
        except users.UserError as exc:
            raise click.ClickException(str(exc)) from exc
        session.commit()
    click.echo(f"user {name} disabled: their dashboard sessions ended" if disabled else f"user {name} enabled")


@users_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def users_list(ctx: Context, as_json: bool) -> None:
    """Every user, with when they were added and whether they are disabled."""
    with _session(ctx) as session:
        found = users.list_users(session)
    if as_json:
        click.echo(json.dumps([{"name": u.name, "created_at": u.created_at.isoformat(), "disabled": u.disabled}
                               for u in found], indent=2))
        return
    for user in found:
        state = "\tdisabled" if user.disabled else ""
        click.echo(f"{user.name}\t{user.created_at:%Y-%m-%d %H:%M} UTC{state}")

