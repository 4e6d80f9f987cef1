"""`primage` command line: serve (and its background jobs), clients, reindex jobs, demo."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import click
import uvicorn
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from fhir_server.reindex import Progress

from . import db
from .auth.clients import Clients
from .import_cli import import_group, jobs
from .settings import Settings


@click.group()
def main() -> None:
    """primage: FHIR R4B / DICOMweb server for paediatric-oncology imaging research."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
@click.option("--demo/--no-demo", default=None, help="Load demo data into an empty store.")
def serve(host: str, port: int, workers: int, demo: bool | None) -> None:
    """Start the HTTP server (migrating the embedded SQLite database first)."""
    # The token issuer is the address served, unless configured: clients that send Host
    # without the port (dicomweb-client does) would otherwise fail the issuer check.
    os.environ.setdefault("PRIMAGE_AUTH_ISSUER", f"http://{host}:{port}")
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    url = settings.database()
    if make_url(url).get_backend_name() == "sqlite":
        db.upgrade(url)
    if demo if demo is not None else settings.demo_data:
        _load_demo(settings, f"http://{host}:{port}/dicomweb")  # first: into an empty store
    # Shipped terminology, once, before the workers start (idempotent: no new versions)
    try:
        click.echo(f"terminology: {load_shipped_terminology(settings)}")
    except DBAPIError as exc:  # a PostgreSQL not migrated yet: `primage db upgrade` first
        click.echo(f"terminology: not loaded ({type(exc.orig).__name__})", err=True)
    base = settings.base_url or f"http://{host}:{port}/fhir"
    click.echo(f"primage FHIR R4B server: {base}")
    click.echo(f"  capability statement: {base}/metadata")
    click.echo(f"  patients:             {base}/Patient")
    dicomweb = settings.dicomweb_base_url or f"http://{host}:{port}/dicomweb"
    click.echo(f"primage DICOMweb:        {dicomweb}/studies  (STOW-RS, QIDO-RS, WADO-RS)")
    click.echo(
        f"  health / metrics:     http://{host}:{port}/healthz  http://{host}:{port}/metrics"
    )
    click.echo(f"  database:             {make_url(url).render_as_string(hide_password=True)}")
    # The periodic jobs (audit indexing, linkage sync) run in one process of their own:
    # in a worker they held the GIL for hundreds of milliseconds and stalled its requests.
    helper = subprocess.Popen([sys.executable, "-m", "primage.cli", "background"])
    os.environ["PRIMAGE_AUDIT_INDEX_INTERVAL"] = "0"
    os.environ["PRIMAGE_LINKAGE_SYNC_INTERVAL"] = "0"
    try:
        uvicorn.run(
            "primage.app:create_app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=settings.log_level.lower(),
        )
    finally:
        helper.terminate()
        helper.wait(timeout=30)


@main.command()
def background() -> None:
    """The server's periodic jobs without its HTTP API: index the staged audit trail every
    PRIMAGE_AUDIT_INDEX_INTERVAL seconds, carry linkage changes into the stores every
    PRIMAGE_LINKAGE_SYNC_INTERVAL seconds. `primage serve` starts it; stop it with SIGTERM."""
    from .app import create_app

    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    app = create_app(settings)  # its audit trail and relinker start their threads here
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    for handler in app.router.on_shutdown:
        handler()


@main.command()
@click.option("--upstream", required=True, help="The platform's root URL, e.g. https://primage.eu")
@click.option("--client-id", required=True, help="The site's OAuth2 client (registered with JWKS)")
@click.option(
    "--key-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The client's private key: a JWK (JSON) or PEM.",
)
@click.option("--site", required=True, help="The site this gateway runs for (its context).")
@click.option(
    "--scope",
    default="system/*.cruds primage/identity.register primage/gateway",
    show_default=True,
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=int)
def gateway(
    upstream: str, client_id: str, key_file: Path, site: str, scope: str, host: str, port: int
) -> None:
    """Run the pseudonymisation gateway stand-alone at a site's edge: local FHIR and STOW-RS
    write endpoints that forward only pseudonymised data to the platform. The gateway key
    (PRIMAGE_GATEWAY_KEY) must be the platform's."""
    from pseudonymisation import edge

    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if settings.gateway_key is None:
        raise click.UsageError("Set PRIMAGE_GATEWAY_KEY to the platform's gateway key")
    key, alg = edge.load_key(key_file)
    app = edge.build_app(
        edge.Upstream(upstream, client_id, key, scope, alg),
        site,
        settings.gateway_key.get_secret_value().encode(),
        spool=settings.data_dir / "edge-spool",
        quarantine=settings.data_dir / "quarantine",
        system=settings.dicom_patient_id_system,
        site_key=(
            settings.gateway_site_key.get_secret_value().encode()
            if settings.gateway_site_key
            else None
        ),
    )
    if settings.gateway_site_key is None:
        click.echo("  warning: no PRIMAGE_GATEWAY_SITE_KEY: local ids are sealed with a key the")
        click.echo("  platform can derive; set one the hospital alone keeps")
    click.echo(f"primage edge gateway for site {site}: http://{host}:{port}/fhir, /dicomweb")
    click.echo(f"  forwarding to {upstream}; quarantine: {settings.data_dir / 'quarantine'}")
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower())


@main.group(name="db")
def db_group() -> None:
    """Database schema."""


@db_group.command()
def upgrade() -> None:
    """Apply all migrations to PRIMAGE_DATABASE_URL."""
    settings = Settings()
    db.upgrade(settings.database())
    click.echo("database is at the latest schema")


@main.group()
def search() -> None:
    """Search index."""


@search.command("reindex")
@click.option("--type", "types", multiple=True, help="Only these resource types.")
@click.option("--param", "params", multiple=True, help="Only these parameter codes.")
@click.option("--batch", default=500, show_default=True)
def search_reindex(types: tuple[str, ...], params: tuple[str, ...], batch: int) -> None:
    """Rebuild search-index rows (resumes an interrupted run with the same options)."""
    from fhir_server.reindex import reindex

    from .app import create_app

    settings = Settings()
    db.upgrade(settings.database())
    app = create_app(settings)
    steps = reindex(
        app.state.database.write, app.state.indexer, types=types, params=params, batch=batch
    )
    last = _progress(steps, "reindexing")
    app.state.database.engine.dispose()
    click.echo(f"reindexed {last} resources")


@main.group()
def clients() -> None:
    """OAuth2 clients (partners, tools, researchers)."""


def _clients() -> tuple[object, Clients]:
    from .app import create_app

    settings = Settings()
    db.upgrade(settings.database())
    app = create_app(settings.model_copy(update={"auth_enabled": True}))
    return app, app.state.auth.clients


@clients.command("add")
@click.argument("name")
@click.option("--scope", required=True, help='e.g. "system/*.rs" or "system/Observation.cruds"')
@click.option("--site", default=None, help="The site whose data the client may see and write.")
@click.option("--jwks-file", type=click.Path(exists=True, dir_okay=False), default=None)
def clients_add(name: str, scope: str, site: str | None, jwks_file: str | None) -> None:
    """Register a client; prints its client_id (and secret, shown this once) as JSON."""
    jwks = json.loads(Path(jwks_file).read_text()) if jwks_file else None
    app, registry = _clients()
    try:
        client, secret = registry.add(name, scope, site, jwks)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        app.state.database.engine.dispose()  # type: ignore[attr-defined]
    out = client.public()
    if secret:
        out["client_secret"] = secret
    click.echo(json.dumps(out, indent=2))


@clients.command("list")
def clients_list() -> None:
    """All clients as JSON (never their secrets)."""
    app, registry = _clients()
    click.echo(json.dumps([c.public() for c in registry.all()], indent=2))
    app.state.database.engine.dispose()  # type: ignore[attr-defined]


@clients.command("disable")
@click.argument("client_id")
def clients_disable(client_id: str) -> None:
    """Stop a client getting tokens (tokens it holds expire within their lifetime)."""
    app, registry = _clients()
    found = registry.disable(client_id)
    app.state.database.engine.dispose()  # type: ignore[attr-defined]
    if not found:
        raise click.UsageError(f"No client {client_id}")
    click.echo(f"client {client_id} disabled")


@clients.command("rotate-secret")
@click.argument("client_id")
def clients_rotate_secret(client_id: str) -> None:
    """A new secret for a secret-based client; the old one stops working."""
    app, registry = _clients()
    secret = registry.rotate_secret(client_id)
    app.state.database.engine.dispose()  # type: ignore[attr-defined]
    if secret is None:
        raise click.UsageError(f"No secret-based client {client_id}")
    click.echo(json.dumps({"client_id": client_id, "client_secret": secret}, indent=2))


@main.group()
def keys() -> None:
    """The keys that sign access tokens."""


@keys.command("rotate")
def keys_rotate() -> None:
    """Start signing with a new key; the old ones stay published until their tokens expire."""
    app, _ = _clients()
    kid = app.state.auth.tokens.keys.rotate()  # type: ignore[attr-defined]
    app.state.database.engine.dispose()  # type: ignore[attr-defined]
    click.echo(f"signing with key {kid}")


@main.group()
def dicom() -> None:
    """DICOM archive."""


@dicom.command("reindex")
@click.option("--batch", default=500, show_default=True)
def dicom_reindex(batch: int) -> None:
    """Fill the extended query tags (PRIMAGE_DICOM_EXTRA_QUERY_TAGS) for stored instances."""
    from dicomweb.reindex import reindex_tags

    from .app import create_app

    settings = Settings()
    db.upgrade(settings.database())
    app = create_app(settings)
    tags = app.state.archive.extra_tags
    if not tags:
        raise click.UsageError("PRIMAGE_DICOM_EXTRA_QUERY_TAGS names no attributes")
    _progress(reindex_tags(app.state.database.write, tags, batch=batch), "indexing tags")
    app.state.database.engine.dispose()


@dicom.command("gc")
def dicom_gc() -> None:
    """Delete blobs that no instance names (older than the grace period)."""
    from .app import create_app

    settings = Settings()
    db.upgrade(settings.database())
    app = create_app(settings)
    seen = app.state.archive.collect_garbage()
    app.state.database.engine.dispose()
    click.echo(f"examined {seen} blobs")


@main.group()
def linkage() -> None:
    """The linkage service built into the platform (pseudonyms, review queue)."""


def _linkage_app() -> object:
    from .app import create_app

    settings = Settings()
    db.upgrade(settings.database())
    app = create_app(settings)
    if getattr(app.state, "linkage", None) is None:
        raise click.UsageError("No in-process linkage service (PRIMAGE_LINKAGE_URL is set)")
    return app


@linkage.command("sync")
@click.option("--base", default="http://127.0.0.1:8080/dicomweb", show_default=True)
def linkage_sync(base: str) -> None:
    """Carry resolved merges and splits into the platform's FHIR and DICOM stores."""
    app = _linkage_app()
    state = app.state  # type: ignore[attr-defined]
    if not state.settings.dicomweb_base_url:
        state.relink.base = base
    applied = sum(1 for _ in state.relink.sync(state.linkage.changes))
    click.echo(f"applied {applied} linkage changes")


@linkage.command("recluster")
def linkage_recluster() -> None:
    """Cluster all registrations in batch; what would change goes to the review queue."""
    app = _linkage_app()
    proposals = app.state.linkage.recluster()  # type: ignore[attr-defined]
    click.echo(f"{len(proposals)} proposals filed for review")


def _progress(steps: Iterator[Progress], label: str) -> int:
    first = next(steps)
    with click.progressbar(length=first.total, label=label) as bar:
        bar.update(first.done)
        last = first.done
        for progress in steps:
            bar.update(progress.done - last)
            last = progress.done
    return last


def load_shipped_terminology(settings: Settings) -> str:
    """What `primage serve` loads at start (mappings/README.md)."""
    from fhir_server.terminology import load

    return _load_terminology(settings, load.shipped(settings.mappings_dir))


def _load_terminology(settings: Settings, paths: list[Path]) -> str:
    """Load `paths` as platform data, indexed for search like any write."""
    from fhir_server.indexing import Indexer
    from fhir_server.searchparams import base_registry
    from fhir_server.terminology import load

    engine = db.make_engine(settings.database(), 1)
    indexer = Indexer(base_registry()) if settings.search_indexing else None
    try:
        database = db.Database(engine, indexer)
        return str(load.load(database.write, load.read_all(paths)))
    finally:
        engine.dispose()


@main.group()
def terminology() -> None:
    """Code systems, value sets and concept maps."""


@terminology.command("load")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def terminology_load(path: Path) -> None:
    """Store a CodeSystem / ValueSet / ConceptMap file, a Bundle of them, or a directory
    (as platform data; unchanged resources are skipped). Search indexing applies as for
    any write; the running server indexes the terminology at its next operation."""
    from fhir_server.errors import FhirError

    try:
        report = _load_terminology(Settings(), [path])
    except FhirError as err:
        raise click.ClickException(err.diagnostics) from None
    click.echo(f"terminology: {report}")


@main.group()
def demo() -> None:
    """Synthetic demo data."""


@demo.command("load")
def demo_load() -> None:
    """Load the demo data set if the store is empty."""
    _load_demo(Settings(), "http://127.0.0.1:8080/dicomweb")


def _load_demo(settings: Settings, dicomweb_base: str) -> None:
    from .app import create_app
    from .demo import dicom, load_if_empty

    db.upgrade(settings.database())
    app = create_app(settings)
    count = load_if_empty(app.state.database, app.state.fhir)
    if count:
        instances = dicom.load(app.state.archive, settings.dicomweb_base_url or dicomweb_base)
        click.echo(f"demo data: {count} resources and a study of {instances} instances loaded")
    else:
        click.echo("demo data: store not empty")
    if app.state.auth is not None:
        _demo_clients(app.state.auth.clients, settings.data_dir, dicomweb_base)
    app.state.database.engine.dispose()


DEMO_CLIENTS = (  # name, scope, site
    ("demo-researcher", "system/*.rs", None),
    ("demo-uploader", "system/*.cruds", None),
    # a hospital: its writes go through the pseudonymisation gateway
    ("demo-hospital", "system/*.cruds primage/identity.reidentify", "DEMO-HOSPITAL"),
)


def _demo_clients(registry: Clients, data_dir: Path, dicomweb_base: str) -> None:
    """The demo clients (created once; their secrets kept in the data dir for the demo)."""
    path = data_dir / "demo-clients.json"
    made = json.loads(path.read_text()) if path.exists() else {}
    for name, scope, site in DEMO_CLIENTS:
        if name not in made or registry.get(made[name]["client_id"]) is None:
            client, secret = registry.add(name, scope, site)
            made[name] = {"client_id": client.client_id, "client_secret": secret, "scope": scope}
    path.write_text(json.dumps(made, indent=2))
    path.chmod(0o600)
    root = dicomweb_base.rsplit("/dicomweb", 1)[0]
    researcher = made["demo-researcher"]
    click.echo(f"demo OAuth2 clients (secrets in {path}); get a token with:")
    click.echo(
        f"  curl -s -u {researcher['client_id']}:{researcher['client_secret']} "
        f"-d grant_type=client_credentials -d scope='system/*.rs' {root}/oauth/token"
    )
    click.echo(f"  then: curl -H 'Authorization: Bearer <access_token>' {root}/fhir/Patient")


main.add_command(import_group)
main.add_command(jobs)

if __name__ == "__main__":
    main()
