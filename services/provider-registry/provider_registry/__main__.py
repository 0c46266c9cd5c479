"""`python -m provider_registry api|worker|migrate|republish|import|export`
(also `referrals registry ...`)."""
import json
import sys
from pathlib import Path

import click

from servicekit.service_cli import service_group

from . import bootstrap

cli = service_group(bootstrap)


def _database():  # type: ignore[no-untyped-def]
    from servicekit.db import Database

    from .tables import metadata

    return Database(bootstrap.load_settings().database_url, metadata)


@cli.command(help="Re-send provider.service_upserted for every service (rebuilds consumers).")
def republish() -> None:
    from .handlers import republish_all

    db = _database()
    with db.transaction() as session:
        count = republish_all(session)
    db.dispose()
    click.echo(f"queued {count} provider.service_upserted events in the outbox")


@cli.command(name="import", help="Import HSDS 3.0: a JSON file, a datapackage folder or zip. "
             "Progress goes to stderr, the per-record report (JSON) to stdout.")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--chunk-size", default=500, show_default=True)
def import_hsds(path: Path, chunk_size: int) -> None:
    from .hsds import importer, sources

    settings = bootstrap.load_settings()
    try:
        src = sources.read_path(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.UsageError(f"{path}: not HSDS JSON or a datapackage ({type(exc).__name__})")

    def progress(done: int, total: int) -> None:
        click.echo(f"\rimported {done}/{total} services", err=True, nl=done == total)

    db = _database()
    try:
        report = importer.import_source(
            db, src, chunk_size=chunk_size, progress=progress,
            default_radius_km=float(settings.get("REGISTRY_DEFAULT_RADIUS_KM")))
    finally:
        db.dispose()
    click.echo(f"created {report.created}, updated {report.updated}, unchanged "
               f"{report.unchanged}, rejected {report.rejected}", err=True)
    json.dump(report.as_dict(), sys.stdout, indent=1, default=str)
    click.echo("")


@cli.command(name="export", help="Export the directory as HSDS 3.0 JSON or a datapackage zip.")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["json", "datapackage"]), default="json")
def export_hsds(path: Path, fmt: str) -> None:
    from .hsds import exporter, read, tabular

    db = _database()
    try:
        with db.uow() as uow:
            docs = exporter.service_documents(uow.session, read.all_service_ids(uow.session))
            taxonomies = read.stored_taxonomies(uow.session)
    finally:
        db.dispose()
    if fmt == "json":
        path.write_text(json.dumps(docs, indent=1, default=str), encoding="utf-8")
    else:
        path.write_bytes(tabular.zip_bytes(tabular.csv_files(tabular.tables_of(docs),
                                                             taxonomies)))
    click.echo(f"exported {len(docs)} services to {path}", err=True)


if __name__ == "__main__":
    cli()
