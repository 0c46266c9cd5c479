"""Benchmark (not a test): provider-registry search and HSDS import on PostgreSQL.

1. Search: a synthetic city of 50,000 services (``referrals seed --providers`` data), then
   ``GET /v1/services?need=&lat=&lon=&radius_km=&language=`` through the Flask app (query,
   page assembly, JSON) at random points of the city; p50/p95 next to the floor: the bare
   indexed SQL query (bounding box on ``ix_location_lat_lon`` + need + language, nearest 20)
   with raw psycopg on the same data, in the same run.
2. Import: a 10,000-service HSDS tabular datapackage (zip) into an empty database: rows
   validated against ``tabular.json``, written, one snapshot per service on the outbox;
   services per second next to the raw floor: inserting the same service rows with a bare
   multi-row INSERT.

Both also report their CPU per operation: this process plus the PostgreSQL backends that
served it (``/proc/<pid>/stat``, when the server is local), which the load average of the
shared machine does not move as much as the wall clock.

Targets (issue 3): search p95 under 50 ms; import at least 1,000 services per second.
Usage: python bench/bench_registry.py [--services 50000] [--import-services 10000]
"""
from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import sqlalchemy.event
from benchlib import format_table, pct, record

from provider_registry import bootstrap, search_index, synthetic
from provider_registry.hsds import importer, sources, tabular, writer
from provider_registry.hsds.bundle import bundle_of
from provider_registry.tables import metadata
from servicekit.auth import mint_dev_token
from servicekit.db import Database, run_migrations
from servicekit.settings import Settings
from servicekit.testing import Infrastructure, _libpq, _resolve_pg

RAW_SEARCH = """
SELECT n.service_id, min((n.latitude - %(lat)s) * (n.latitude - %(lat)s) * 12226.6
                 + (n.longitude - %(lon)s) * (n.longitude - %(lon)s) * %(kx2)s) AS d2
FROM service_site_need n JOIN service s ON s.id = n.service_id
WHERE n.category = %(need)s AND n.lat_band = ANY(%(bands)s)
  AND n.latitude BETWEEN %(lat0)s AND %(lat1)s AND n.longitude BETWEEN %(lon0)s AND %(lon1)s
  AND (s.interpretation_available OR EXISTS (SELECT 1 FROM service_language sl
                                            WHERE sl.service_id = n.service_id
                                              AND sl.code = %(lang)s))
GROUP BY n.service_id ORDER BY d2 LIMIT 20
"""
# the normalized tables' bare query (the floor before the search table), for comparison
OLD_RAW_SEARCH = """
SELECT s.id, min((l.latitude - %(lat)s) * (l.latitude - %(lat)s) * 12226.6
                 + (l.longitude - %(lon)s) * (l.longitude - %(lon)s) * %(kx2)s) AS d2
FROM location l
JOIN service_at_location sal ON sal.location_id = l.id
JOIN service s ON s.id = sal.service_id
WHERE l.latitude BETWEEN %(lat0)s AND %(lat1)s AND l.longitude BETWEEN %(lon0)s AND %(lon1)s
  AND s.id IN (SELECT service_id FROM service_category WHERE category = %(need)s)
  AND (s.id IN (SELECT service_id FROM service_language WHERE code = %(lang)s)
       OR s.interpretation_available)
GROUP BY s.id ORDER BY d2 LIMIT 20
"""


def _query(rng: random.Random) -> dict[str, object]:
    lat = rng.uniform(synthetic.BBOX[0], synthetic.BBOX[1])
    lon = rng.uniform(synthetic.BBOX[2], synthetic.BBOX[3])
    return {"lat": lat, "lon": lon, "radius_km": 3.0, "need": rng.choice(
        ["housing", "food", "mental_health", "medical"]), "language": rng.choice(["es", "vi"])}


def _raw_params(q: dict[str, object]) -> dict[str, object]:
    lat, lon, r = float(q["lat"]), float(q["lon"]), float(q["radius_km"])  # type: ignore[arg-type]
    kx = 111.32 * math.cos(math.radians(lat))
    return {"lat": lat, "lon": lon, "kx2": kx * kx, "lat0": lat - r / 110.574,
            "lat1": lat + r / 110.574, "lon0": lon - r / kx, "lon1": lon + r / kx,
            "need": q["need"], "lang": q["language"],
            "bands": search_index.bands_between(lat - r / 110.574, lat + r / 110.574)}


def _seed_without_events(url: str, n_services: int) -> None:
    """The synthetic city written with the import's own rules and bulk writer, minus the
    outbox events (search does not read them; seeding 50,000 goes faster without)."""
    docs, capacities = synthetic.city(n_services, seed=2026, today=date(2026, 11, 1))
    db = Database(url, metadata)
    now = datetime.now(UTC)
    for start in range(0, len(docs), 2000):
        bundles = [synthetic._local_time(bundle_of(d, known_terms={}, default_radius_km=25,
                                                   now=now)) for d in docs[start:start + 2000]]
        with db.transaction() as session:
            writer.write_bundles(session, bundles, now)
            writer.write_capacities(session, {b.service_id: capacities[b.service_id]
                                              for b in bundles}, now)
    db.dispose()


def _scanned(node: dict[str, Any]) -> float:
    """Rows the scans of a plan visited: returned plus removed by a filter, times loops."""
    own = 0.0
    if "Scan" in node["Node Type"]:
        own = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
               + node.get("Rows Removed by Index Recheck", 0)) * node.get("Actual Loops", 1)
    return own + sum(_scanned(child) for child in node.get("Plans", []))


def _explain(conn: psycopg.Connection[Any], sql: str, params: Any) -> tuple[float, float, int]:
    """EXPLAIN (ANALYZE, BUFFERS): server execution ms, rows visited, shared buffers."""
    plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params
                        ).fetchone()[0][0]  # type: ignore[index]
    top = plan["Plan"]
    return (plan["Execution Time"], _scanned(top),
            top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0))


class BackendCpu:
    """CPU time of the PostgreSQL backends serving an engine (``/proc/<pid>/stat``, so only
    when the server runs on this machine and its processes are readable; else None): the
    database's share of the work, which the process CPU does not see."""

    def __init__(self, engine: Any):
        self.pids: set[int] = set()

        @sqlalchemy.event.listens_for(engine, "connect")
        def _pid(dbapi_conn: Any, _record: Any) -> None:
            self.pids.add(dbapi_conn.info.backend_pid)

    def seconds(self) -> float | None:
        total = 0.0
        try:
            for pid in self.pids:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None
        return total


def _ms(seconds: float | None, per: int) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000 / per:.1f} ms"


def search_bench(url: str, settings: Settings, n_services: int, n_queries: int
                 ) -> list[dict[str, object]]:
    started = time.perf_counter()
    _seed_without_events(url, n_services)
    print(f"seeded {n_services} services in {time.perf_counter() - started:.0f} s")
    app = bootstrap.create_app(settings)
    client = app.test_client()
    headers = {"Authorization": "Bearer " + mint_dev_token(settings, sub="bench-officer",
                                                           role="officer", agency="metro-pd")}
    seen: list[tuple[str, Any]] = []  # the API's search statement, to EXPLAIN it

    @sqlalchemy.event.listens_for(app.extensions["db"].engine, "before_cursor_execute")
    def _capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "service_site_need" in statement and "GROUP BY" in statement:
            seen.append((statement, params))

    backends = BackendCpu(app.extensions["db"].engine)
    rng = random.Random(7)
    queries = [_query(rng) for _ in range(n_queries)]
    api, api_cpu, raw, hits, totals = [], [], [], [], []
    plans: dict[str, list[tuple[float, float, int]]] = {"API": [], "floor": [], "old": []}
    # autocommit: an ANALYZE inside the connection's open transaction kept the fresh
    # statistics invisible to the API's connections (and blocked autovacuum's) for the
    # whole run, so the API planned without statistics while the bare SQL had them
    with psycopg.connect(_libpq(url.replace("+psycopg", "")), autocommit=True) as conn:
        conn.execute("ANALYZE")
        for q in queries[:20]:  # warm both paths
            client.get("/v1/services", query_string={**q, "limit": 20}, headers=headers)
            conn.execute(RAW_SEARCH, _raw_params(q)).fetchall()
        before = backends.seconds()  # the API's own connections: only its requests
        for i, q in enumerate(queries):
            t0, c0 = time.perf_counter(), time.process_time()
            resp = client.get("/v1/services", query_string={**q, "limit": 20}, headers=headers)
            api.append((time.perf_counter() - t0) * 1000)
            api_cpu.append((time.process_time() - c0) * 1000)  # Python side, load-immune
            assert resp.status_code == 200, resp.get_data(as_text=True)
            hits.append(len(resp.json["items"]))
            totals.append(resp.json["total"])
            t0 = time.perf_counter()
            conn.execute(RAW_SEARCH, _raw_params(q)).fetchall()
            raw.append((time.perf_counter() - t0) * 1000)
            if i < 30:  # server-side cost, immune to the machine's load
                plans["API"].append(_explain(conn, *seen[-1]))
                plans["floor"].append(_explain(conn, RAW_SEARCH, _raw_params(q)))
                plans["old"].append(_explain(conn, OLD_RAW_SEARCH, _raw_params(q)))
        after = backends.seconds()
    api_backend = None if before is None or after is None else after - before
    app.extensions["db"].dispose()
    print(f"search: {n_queries} queries, median {sorted(hits)[len(hits) // 2]} results, "
          f"median total {sorted(totals)[len(totals) // 2]}; API process CPU per request "
          f"p50 {pct(api_cpu, 50):.1f} ms, p95 {pct(api_cpu, 95):.1f} ms, mean "
          f"{sum(api_cpu) / len(api_cpu):.1f} ms; PostgreSQL backend CPU per request "
          f"{_ms(api_backend, n_queries)} "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    for name, got in plans.items():
        label = {"API": "API search statement", "floor": "bare SQL on service_site_need",
                 "old": "bare SQL on location (before)"}[name]
        print(f"EXPLAIN ANALYZE {label}: median execution "
              f"{pct([g[0] for g in got], 50):.2f} ms, p95 {pct([g[0] for g in got], 95):.2f} ms,"
              f" median rows visited {pct([g[1] for g in got], 50):.0f}, "
              f"median shared buffers {pct([g[2] for g in got], 50):.0f}")
    area = f"registry search ({n_services} services)"
    return [record(area, f"p{p} need+radius+language, 20/page (API, n={n_queries})",
                   pct(api, p), "ms", baseline="bare indexed SQL", baseline_value=pct(raw, p),
                   target="p95 < 50 ms" if p == 95 else None,
                   met=pct(api, p) < 50 if p == 95 else None) for p in (50, 95)] + [
        *([record(area, "CPU per request, mean (API process + PostgreSQL backends)",
                  (sum(api_cpu) / len(api_cpu)) + api_backend * 1000 / n_queries, "ms",
                  process_ms=sum(api_cpu) / len(api_cpu),
                  backend_ms=api_backend * 1000 / n_queries)] if api_backend is not None else []),
        record(area, "server execution of the API statement (EXPLAIN ANALYZE, p50, n=30)",
               pct([g[0] for g in plans["API"]], 50), "ms",
               baseline="bare SQL before the search table",
               baseline_value=pct([g[0] for g in plans["old"]], 50))]


def import_bench(url: str, n_services: int) -> list[dict[str, object]]:
    docs, _ = synthetic.city(n_services, seed=99, today=date(2026, 11, 1))
    files = tabular.csv_files(tabular.tables_of(docs), [])
    payload = tabular.zip_bytes(files)
    db = Database(url, metadata)
    backends = BackendCpu(db.engine)
    started, cpu = time.perf_counter(), time.process_time()
    src = sources.read_bytes(payload)
    report = importer.import_source(db, src, default_radius_km=25, chunk_size=1000)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    db_cpu = backends.seconds()  # the backends started with the import: all theirs
    db.dispose()
    assert (report.created, report.rejected) == (n_services, 0), report.records[:3]
    rows = [{"id": d["id"], "org": d["organization_id"], "name": d["name"]} for d in docs]
    with psycopg.connect(_libpq(url.replace("+psycopg", ""))) as conn:
        conn.execute("CREATE TEMP TABLE raw_service (id text primary key, org text, name text)")
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            for i in range(0, len(rows), 1000):
                batch = rows[i:i + 1000]
                cur.execute("INSERT INTO raw_service VALUES " + ",".join(
                    ["(%s,%s,%s)"] * len(batch)),
                    [v for r in batch for v in (r["id"], r["org"], r["name"])])
        conn.commit()
        raw_elapsed = time.perf_counter() - t0
    rate, raw_rate = n_services / elapsed, n_services / raw_elapsed
    both = None if db_cpu is None else cpu + db_cpu
    print(f"import: {n_services} services ({len(payload) // 1024} KB zip) in {elapsed:.1f} s, "
          f"{cpu:.1f} s CPU of this process ({n_services / cpu:.0f} services per CPU-second) "
          f"+ {'n/a' if db_cpu is None else f'{db_cpu:.1f} s'} PostgreSQL backend CPU: "
          f"{_ms(both, n_services)} CPU per imported service "
          f"({'n/a' if both is None else f'{n_services / both:.0f}'} services per CPU-second "
          f"in all; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    rows = [record("registry HSDS import", f"{n_services}-service datapackage zip", rate,
                   "services/s", baseline="bare INSERT of the service rows",
                   baseline_value=raw_rate, target=">= 1000 services/s", met=rate >= 1000,
                   services_per_cpu_second=n_services / cpu, load_average=os.getloadavg()[0])]
    if both is not None:  # load-immune: what the import costs, whatever the machine does
        rows.append(record("registry HSDS import", "CPU per imported service (process + "
                           "PostgreSQL backends)", both * 1000 / n_services, "ms",
                           process_ms=cpu * 1000 / n_services,
                           backend_ms=db_cpu * 1000 / n_services))  # type: ignore[operator]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--import-services", type=int, default=10_000)
    args = parser.parse_args()
    with ExitStack() as stack:
        pg, origin = _resolve_pg(stack)
        infra = Infrastructure(kafka="", pg_admin_url=pg, kafka_origin="unused",
                               pg_origin=origin)
        stack.callback(infra.close)
        search_url = infra.new_database("bench-registry")
        import_url = infra.new_database("bench-import")
        for url in (search_url, import_url):
            run_migrations(url, bootstrap.MIGRATIONS)
        settings = Settings.from_env("provider-registry", {
            "REGISTRY_DATABASE_URL": search_url, "LOG_LEVEL": "WARNING",
            "VAR_DIR": stack.enter_context(tempfile.TemporaryDirectory())})
        rows = import_bench(import_url, args.import_services)
        rows += search_bench(search_url, settings, args.services, args.queries)
    print(format_table(rows))


if __name__ == "__main__":
    main()
