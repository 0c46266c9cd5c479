"""`python -m referral_intake api|worker|migrate|keys rotate|audit verify` (also
`referrals intake ...`; `referrals keys rotate` and `referrals audit verify` delegate here)."""
import sys
from pathlib import Path

import click

from servicekit import crypto
from servicekit.db import Database
from servicekit.service_cli import service_group

from . import audit as audit_chain
from . import bootstrap, vault

cli = service_group(bootstrap)


@cli.group()
def keys() -> None:
    """PII key-encryption keys."""


@keys.command()
@click.option("--batch", default=200, show_default=True, help="subjects per transaction")
def rotate(batch: int) -> None:
    """Add a new active KEK to the keyring file and re-wrap every data key under it, in
    small transactions while the service keeps serving (apis reload the keyring file)."""
    settings = bootstrap.load_settings()
    if settings.get("PII_KEYRING").strip():
        raise click.UsageError("PII_KEYRING is given inline: rotate it in your secret store, "
                               "then run `referrals keys rewrap`")
    path = Path(settings.get("PII_KEYRING_FILE"))
    ring = crypto.Keyring.load("", path, create=settings.get("DEV_KEYS") == "1")
    rotated = ring.with_new_active_key()
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(rotated.to_json(), encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)  # atomic: readers see the old or the new ring, never half of one
    _rewrap(settings, batch, f"new active key {rotated.active}")


@keys.command(name="rewrap")
@click.option("--batch", default=200, show_default=True)
def rewrap(batch: int) -> None:
    """Re-wrap data keys still under an older KEK (after an external rotation)."""
    _rewrap(bootstrap.load_settings(), batch, "re-wrap only")


def _rewrap(settings: object, batch: int, what: str) -> None:
    ctx = bootstrap.build_context(settings)  # type: ignore[arg-type]
    db = Database(settings.database_url, bootstrap.metadata)  # type: ignore[attr-defined]
    try:
        count = vault.rotate(db, ctx.keysource, ctx.audit_key, batch)
    finally:
        db.dispose()
    click.echo(f"{what}: re-wrapped {count} data keys")


@cli.group()
def audit() -> None:
    """The hash-chained PII audit log."""


@audit.command()
def verify() -> None:
    """Verify the audit chain; exit 1 if a row was modified, deleted or reordered."""
    settings = bootstrap.load_settings()
    ctx = bootstrap.build_context(settings)
    db = Database(settings.database_url, bootstrap.metadata)
    try:
        with db.uow() as uow:
            verdict = audit_chain.verify(uow.session, ctx.audit_key)
    finally:
        db.dispose()
    if verdict.ok:
        click.echo(f"audit chain intact: {verdict.rows} entries")
        return
    click.echo(f"audit chain BROKEN in chain {verdict.chain} at seq {verdict.first_bad_seq}: "
               f"{verdict.problem}", err=True)
    sys.exit(1)


if __name__ == "__main__":
    cli()
