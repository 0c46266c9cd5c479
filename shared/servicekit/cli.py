"""`referrals`: one command line for the whole system.

    referrals up                      the embedded stack (broker, every api and worker)
    referrals token --role R --sub S  a dev JWT signed with the embedded dev key
    referrals seed                    demo providers (and prints demo users' tokens)
    referrals <service> api|worker|migrate
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import click

from . import auth, crypto, demo, provisioning
from .settings import SERVICE_INFO, SERVICE_MODULES, Settings

ALIASES = {"intake": "referral-intake", "registry": "provider-registry"}
SHORT_NAMES = {service: alias for alias, service in ALIASES.items()}
# top-level commands that live in a service's CLI: `referrals keys rotate` -> intake's `keys`
DELEGATED = {"keys": "referral-intake", "audit": "referral-intake"}


class _Services(click.Group):
    """Resolves `referrals intake ...`, `referrals referral-intake ...` lazily."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(super().list_commands(ctx) + list(SERVICE_MODULES) + list(DELEGATED))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        service = ALIASES.get(name, name)
        if service in SERVICE_MODULES:
            return importlib.import_module(f"{SERVICE_MODULES[service]}.__main__").cli
        if name in DELEGATED:
            group = importlib.import_module(f"{SERVICE_MODULES[DELEGATED[name]]}.__main__").cli
            return group.get_command(ctx, name)  # type: ignore[no-any-return]
        return super().get_command(ctx, name)


@click.group(cls=_Services)
def main() -> None:
    """Referral routing: officers -> community services, with consent and a closed loop."""


@main.command()
@click.option("--role", required=True, type=click.Choice(auth.ROLES))
@click.option("--sub", required=True, help="subject: a user id, never a name")
@click.option("--agency", default=None, help="agency id (officers, supervisors)")
@click.option("--org", default=None, help="organization id (providers)")
@click.option("--ttl", default=8 * 3600, show_default=True, help="lifetime in seconds")
def token(role: str, sub: str, agency: str | None, org: str | None, ttl: int) -> None:
    """Print a dev JWT signed with the embedded dev key."""
    settings = Settings.from_env("cli")
    try:
        click.echo(auth.mint_dev_token(settings, sub=sub, role=role, agency=agency, org=org,
                                       ttl_seconds=ttl))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _database_url(service: str) -> str:
    return str(provisioning.bootstrap_of(service).load_settings().database_url)


def demo_tokens(settings: Settings) -> list[tuple[str, str, str]]:
    return [(role, sub, auth.mint_dev_token(settings, sub=sub, role=role, agency=agency, org=org))
            for role, sub, agency, org in demo.DEMO_USERS]


@main.command()
@click.option("--providers", "providers", type=click.IntRange(min=1), default=None,
              help="also build a synthetic city of N provider services (deterministic)")
@click.option("--seed", "seed_value", type=int, default=1, show_default=True,
              help="random seed of the synthetic city (same N and seed: same city)")
def seed(providers: int | None, seed_value: int) -> None:
    """Load the demo provider directory (idempotent) and print demo users' tokens."""
    url = _database_url("provider-registry")
    provisioning.migrate({"provider-registry": url})
    provisioning.seed_demo_directory(url)
    click.echo("seeded demo providers: " + ", ".join((demo.DEMO_ORG_NAME, demo.DEMO_ORG2_NAME)))
    if providers:
        created = provisioning.seed_synthetic_city(url, providers, seed_value)
        click.echo(f"synthetic city (seed {seed_value}): {providers} services, "
                   f"{created} new", err=True)
    for role, sub, tok in demo_tokens(Settings.from_env("cli")):
        click.echo(f"{role:<10} {sub:<26} {tok}")


def _prepare_keys(settings: Settings) -> None:
    auth.ensure_dev_keypair(Path(settings.get("JWT_PRIVATE_KEY_FILE")),
                            Path(settings.get("JWT_PUBLIC_KEY_FILE")))
    crypto.Keyring.load(settings.get("PII_KEYRING"), Path(settings.get("PII_KEYRING_FILE")),
                        create=True)


@main.command()
@click.option("--seed/--no-seed", "do_seed", default=True, show_default=True)
def up(do_seed: bool) -> None:
    """Run the whole system on its embedded default, supervised; Ctrl-C stops everything."""
    from honcho.manager import Manager

    settings = Settings.from_env("cli")
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    _prepare_keys(settings)
    env = dict(os.environ, VAR_DIR=str(settings.var_dir.resolve()), PYTHONUNBUFFERED="1")
    manager = Manager()
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        from .broker import tansu_command

        port = settings.int("EMBEDDED_KAFKA_PORT")
        env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{port}"
        manager.add_process("broker", " ".join(tansu_command(port)), env=env)
    os.environ.update(env)
    provisioning.migrate({service: _database_url(service) for service in SERVICE_MODULES})
    if do_seed:
        click.get_current_context().invoke(seed)
    for service, module in SERVICE_MODULES.items():
        short = SHORT_NAMES.get(service, service)
        for kind in ("api", "worker"):
            manager.add_process(f"{short}-{kind}", f"{sys.executable} -m {module} {kind}",
                                env=env)
    manager.add_process("console", f"{sys.executable} -m console api", env=env)
    click.echo("\nReferral routing is starting (Ctrl-C stops everything):")
    click.echo(f"  Kafka broker        {env['KAFKA_BOOTSTRAP_SERVERS']}")
    for service, (prefix, _port) in SERVICE_INFO.items():
        port = Settings.from_env(service).port
        click.echo(f"  {service:<19} http://127.0.0.1:{port}  (OpenAPI: /openapi.json)")
    click.echo(f"  {'console':<19} http://127.0.0.1:{settings.int('CONSOLE_PORT')}  "
               "(web UI; demo sign-in)")
    click.echo("")
    manager.loop()
    sys.exit(manager.returncode)


if __name__ == "__main__":
    main()
