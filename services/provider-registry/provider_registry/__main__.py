"""`python -m provider_registry api|worker|migrate|republish` (also `referrals registry ...`)."""
import click

from servicekit.service_cli import service_group

from . import bootstrap

cli = service_group(bootstrap)


@cli.command(help="Re-send provider.service_upserted for every service (rebuilds consumers).")
def republish() -> None:
    from servicekit.db import Database

    from .handlers import republish_all
    from .tables import metadata

    db = Database(bootstrap.load_settings().database_url, metadata)
    with db.transaction() as session:
        count = republish_all(session)
    db.dispose()
    click.echo(f"queued {count} provider.service_upserted events in the outbox")


if __name__ == "__main__":
    cli()
