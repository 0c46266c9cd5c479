"""The container deployment agrees with the code (no Docker needed).

docker-compose.yml, deploy/postgres-init.sql and the Dockerfile are checked against the
code's own sources of truth: ``servicekit.settings`` (ENVIRONMENT, SERVICE_INFO, the way
defaults expand) and ``servicekit.cli`` (the service modules and the ``referrals`` commands).

Each rule is a function returning a list of problems (empty when the files are right), so
the ``test_broken_*_copy_is_caught`` tests prove every rule able to fail: each breaks a copy of the
files in one way and expects the matching problem.
"""
from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import tomllib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from servicekit.cli import main as referrals_cli
from servicekit.settings import ENVIRONMENT, SERVICE_INFO, SERVICE_MODULES, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
INIT_SQL_FILE = ROOT / "deploy" / "postgres-init.sql"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"

KINDS = ("migrate", "api", "worker")
KAFKA, POSTGRES, SEED, CONSOLE = "kafka", "postgres", "seed", "console"
KAFKA_PORT = 9092  # DESIGN.md §8
ENV_VARS = {var.name: var for var in ENVIRONMENT}
SEED_OWNER = "provider-registry"  # `referrals seed` loads the registry's demo directory

Compose = dict[str, Any]
Problems = list[str]


# --------------------------------------------------------------------------------------
# Reading the files
# --------------------------------------------------------------------------------------

def load_compose() -> Compose:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def name(service: str, kind: str) -> str:
    return f"{service}-{kind}"


def services(compose: Compose) -> dict[str, dict[str, Any]]:
    return compose.get("services") or {}


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    """The environment as a dict (Compose allows a mapping or a list of KEY=VALUE)."""
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        out = {}
        for item in raw:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out
    return {str(k): "" if v is None else str(v) for k, v in raw.items()}


def command_of(svc: dict[str, Any]) -> list[str]:
    raw = svc.get("command") or []
    return shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]


def healthcheck_of(svc: dict[str, Any]) -> str:
    """The healthcheck's test as one string; empty when absent or disabled."""
    check = svc.get("healthcheck") or {}
    if check.get("disable"):
        return ""
    test = check.get("test") or ""
    if isinstance(test, list):
        if test and test[0] == "NONE":
            return ""
        test = " ".join(str(part) for part in test)
    return str(test)


def published_ports(svc: dict[str, Any]) -> list[tuple[str | None, str | None]]:
    """(published, target) pairs, short or long syntax; published is None when random."""
    out: list[tuple[str | None, str | None]] = []
    for entry in svc.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            out.append((None if published is None else str(published), str(entry.get("target"))))
            continue
        spec = str(entry).split("/")[0]  # drop /tcp
        parts = spec.rsplit(":", 2)
        if len(parts) == 1:
            out.append((None, parts[0]))
        else:
            out.append((parts[-2] or None, parts[-1]))
    return out


def depends_of(svc: dict[str, Any]) -> dict[str, str]:
    """depends_on as {service: condition} (the list form means service_started)."""
    raw = svc.get("depends_on") or {}
    if isinstance(raw, list):
        return {str(dep): "service_started" for dep in raw}
    return {str(dep): str((spec or {}).get("condition", "service_started"))
            for dep, spec in raw.items()}


def mounts_of(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every volume entry, short or long syntax."""
    out = []
    for entry in svc.get("volumes") or []:
        if isinstance(entry, dict):
            out.append((str(entry.get("source", "")), str(entry.get("target", ""))))
        else:
            parts = str(entry).split(":")
            if len(parts) >= 2:
                out.append((parts[0], parts[1]))
    return out


def is_named_volume(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def strip_sql_comments(sql: str) -> str:
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.DOTALL)
    return re.sub(r"--[^\n]*", " ", sql)


def parse_init_sql(sql: str) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """({database: owner}, {login role: password}) created by the init script."""
    body = strip_sql_comments(sql)
    databases = {
        m.group(1): m.group(2)
        for m in re.finditer(
            r'CREATE\s+DATABASE\s+"?(\w+)"?(?:\s+(?:WITH\s+)?OWNER\s*=?\s*"?(\w+)"?)?',
            body, flags=re.IGNORECASE)
    }
    roles: dict[str, str | None] = {}
    for m in re.finditer(r'CREATE\s+(ROLE|USER)\s+"?(\w+)"?([^;]*);', body, flags=re.IGNORECASE):
        kind, role, options = m.groups()
        login = kind.upper() == "USER" or re.search(r"\bLOGIN\b", options, flags=re.IGNORECASE)
        if not login or re.search(r"\bNOLOGIN\b", options, flags=re.IGNORECASE):
            continue  # a role that cannot log in is no database URL's user
        password = re.search(r"PASSWORD\s+'([^']*)'", options, flags=re.IGNORECASE)
        roles[role] = password.group(1) if password else None
    return databases, roles


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\s*\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def app_services(compose: Compose) -> dict[str, dict[str, Any]]:
    """Every service running the project's image (built from this repository)."""
    svcs = services(compose)
    built_images = {svc.get("image") for svc in svcs.values() if svc.get("build")}
    return {n: svc for n, svc in svcs.items()
            if svc.get("build") or (svc.get("image") and svc.get("image") in built_images)}


def owner_of(container: str) -> str | None:
    """Which service a container belongs to (``seed`` belongs to the registry)."""
    if container == SEED:
        return SEED_OWNER
    if container == CONSOLE:
        return CONSOLE
    for service in SERVICE_INFO:
        if container in (name(service, kind) for kind in KINDS):
            return service
    return None


# --------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------

def check_layout(compose: Compose) -> Problems:
    svcs = services(compose)
    problems = [f"{name(s, k)}: missing" for s in SERVICE_INFO for k in KINDS
                if name(s, k) not in svcs]
    problems += [f"{n}: missing" for n in (KAFKA, POSTGRES, SEED, CONSOLE) if n not in svcs]
    return problems


def module_exists(module: str) -> bool:
    try:
        return (importlib.util.find_spec(module) is not None
                and importlib.util.find_spec(f"{module}.__main__") is not None)
    except (ImportError, ValueError):
        return False


def cli_commands(module: str) -> set[str]:
    """The commands of ``python -m <module>`` (its __main__ defines ``cli`` and does not run
    it on import)."""
    try:
        return set(importlib.import_module(f"{module}.__main__").cli.commands)
    except Exception:  # noqa: BLE001 - an unimportable CLI has no commands
        return set()


def check_commands(compose: Compose) -> Problems:
    problems = []
    svcs = services(compose)
    for service, module in SERVICE_MODULES.items():
        for kind in KINDS:
            svc = svcs.get(name(service, kind))
            if svc is None:
                continue
            if svc.get("entrypoint"):
                problems.append(f"{name(service, kind)}: overrides the image's entrypoint")
            cmd = command_of(svc)
            if cmd != ["python", "-m", module, kind]:
                problems.append(f"{name(service, kind)}: command {cmd} is not "
                                f"`python -m {module} {kind}`")
            if len(cmd) == 4 and cmd[:2] == ["python", "-m"]:
                if not module_exists(cmd[2]):
                    problems.append(f"{name(service, kind)}: module {cmd[2]!r} (or its "
                                    "__main__) does not exist")
                elif cmd[3] not in cli_commands(cmd[2]):
                    problems.append(f"{name(service, kind)}: `python -m {cmd[2]}` has no "
                                    f"{cmd[3]!r} command")
    if SEED in svcs:
        cmd = command_of(svcs[SEED])
        scripts = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["scripts"]
        if cmd != ["referrals", "seed"]:
            problems.append(f"seed: command {cmd} is not `referrals seed`")
        if "referrals" not in scripts or "seed" not in referrals_cli.commands:
            problems.append("seed: the `referrals seed` command does not exist")
    return problems


def check_ports(compose: Compose) -> Problems:
    problems = []
    svcs = services(compose)
    for service, (prefix, port) in SERVICE_INFO.items():
        for kind in KINDS:
            container = name(service, kind)
            svc = svcs.get(container)
            if svc is None:
                continue
            env = env_of(svc)
            ports = published_ports(svc)
            if kind == "api":
                if ports != [(str(port), str(port))]:
                    problems.append(f"{container}: publishes {ports}, expected exactly "
                                    f"{port}:{port}")
                if env.get(f"{prefix}_PORT") != str(port):
                    problems.append(f"{container}: {prefix}_PORT is "
                                    f"{env.get(f'{prefix}_PORT')!r}, expected {port}")
                if env.get("API_HOST") != "0.0.0.0":
                    problems.append(f"{container}: API_HOST is {env.get('API_HOST')!r}; the api "
                                    "must bind 0.0.0.0 to be reachable through its port")
            else:
                if ports:
                    problems.append(f"{container}: publishes {ports}, but only apis listen")
                if f"{prefix}_PORT" in env and env[f"{prefix}_PORT"] != str(port):
                    problems.append(f"{container}: {prefix}_PORT is {env[f'{prefix}_PORT']!r}, "
                                    f"expected {port}")
    seen: dict[str, str] = {}
    for container, svc in svcs.items():
        for published, _target in published_ports(svc):
            if published is not None:
                if published in seen:
                    problems.append(f"{container}: host port {published} is also published by "
                                    f"{seen[published]}")
                seen[published] = container
    return problems


def check_environment_names(compose: Compose) -> Problems:
    """Every variable set on an app container is one the code reads, in that service."""
    problems = []
    for container, svc in app_services(compose).items():
        owner = owner_of(container)
        for var_name in env_of(svc):
            var = ENV_VARS.get(var_name)
            if var is None:
                problems.append(f"{container}: sets {var_name}, which the code never reads "
                                "(not in servicekit.settings.ENVIRONMENT)")
                continue
            scope = var.services.strip()
            readers = {part.strip() for part in scope.split(",")}
            allowed = (scope == "all" or owner in readers
                       or (container == SEED and scope.startswith("cli")))
            if not allowed:
                problems.append(f"{container}: sets {var_name}, which only {scope} reads")
    return problems


def check_databases(compose: Compose, init_sql: str) -> Problems:
    problems = []
    svcs = services(compose)
    databases, roles = parse_init_sql(init_sql)
    postgres_image = str((svcs.get(POSTGRES) or {}).get("image", ""))
    if not re.fullmatch(r"postgres:16([.\-].*)?", postgres_image):
        problems.append(f"postgres: image {postgres_image!r} is not PostgreSQL 16")
    mounted = [target for source, target in mounts_of(svcs.get(POSTGRES) or {})
               if (ROOT / source).resolve() == INIT_SQL_FILE.resolve()
               and target.startswith("/docker-entrypoint-initdb.d/")]
    if not mounted:
        problems.append("postgres: deploy/postgres-init.sql is not mounted into "
                        "/docker-entrypoint-initdb.d/")
    used_by: dict[str, str] = {}
    urls: dict[str, str] = {}
    for service, (prefix, _port) in SERVICE_INFO.items():
        var = f"{prefix}_DATABASE_URL"
        expected_db = service.replace("-", "_")
        if expected_db not in databases:
            problems.append(f"deploy/postgres-init.sql: database {expected_db} is not created")
        found = {}
        for kind in KINDS:
            svc = svcs.get(name(service, kind))
            if svc is None:
                continue
            url = env_of(svc).get(var)
            if not url:
                problems.append(f"{name(service, kind)}: {var} is not set")
            else:
                found[kind] = url
        if len(set(found.values())) > 1:
            problems.append(f"{service}: {var} differs between its migrate, api and worker")
        for kind, url in found.items():
            container = name(service, kind)
            parts = urlsplit(url)
            db = parts.path.lstrip("/")
            if parts.scheme != "postgresql+psycopg":
                problems.append(f"{container}: {var} scheme {parts.scheme!r} is not "
                                "postgresql+psycopg")
            if parts.hostname != POSTGRES or POSTGRES not in svcs:
                problems.append(f"{container}: {var} host {parts.hostname!r} is not the "
                                "postgres service")
            if parts.port not in (None, 5432):
                problems.append(f"{container}: {var} port {parts.port} is not 5432")
            if db not in databases:
                problems.append(f"{container}: {var} names database {db!r}, which "
                                "deploy/postgres-init.sql does not create")
            elif db != expected_db:
                problems.append(f"{container}: {var} names database {db!r}, not the "
                                f"service's own {expected_db!r}")
            user = unquote(parts.username or "")
            owner = databases.get(db)
            if owner is not None and user != owner:
                problems.append(f"{container}: {var} logs in as {user!r}, but {db} is owned "
                                f"by {owner!r}")
            if user not in roles:
                problems.append(f"{container}: {var} logs in as {user!r}, a role "
                                "deploy/postgres-init.sql does not create")
            elif roles[user] is not None and unquote(parts.password or "") != roles[user]:
                problems.append(f"{container}: {var} password does not match the role's in "
                                "deploy/postgres-init.sql")
            if used_by.setdefault(db, service) != service:
                problems.append(f"{container}: database {db!r} is also used by "
                                f"{used_by[db]} (each service owns its database)")
        if found:
            urls[service] = next(iter(found.values()))
    # No container is handed another service's database.
    for container, svc in app_services(compose).items():
        owner = owner_of(container)
        for service, (prefix, _port) in SERVICE_INFO.items():
            if service != owner and f"{prefix}_DATABASE_URL" in env_of(svc):
                problems.append(f"{container}: is given {prefix}_DATABASE_URL, the database "
                                f"of {service}")
    if SEED in svcs:
        prefix = SERVICE_INFO[SEED_OWNER][0]
        seed_url = env_of(svcs[SEED]).get(f"{prefix}_DATABASE_URL")
        if not seed_url or seed_url != urls.get(SEED_OWNER):
            problems.append(f"seed: {prefix}_DATABASE_URL is not the registry's database URL")
    return problems


def advertised_in_network(compose: Compose) -> tuple[set[str], Problems]:
    """host:port of the broker's advertised listener(s) that other containers use."""
    problems = []
    kafka = services(compose).get(KAFKA) or {}
    env = env_of(kafka)
    names_in_network = {KAFKA, str(kafka.get("hostname", KAFKA))}
    protocols = dict(item.split(":", 1) for item in
                     env.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "").split(",") if ":" in item)
    bound = {}
    for item in env.get("KAFKA_LISTENERS", "").split(","):
        m = re.fullmatch(r"\s*(\w+)://([^:]*):(\d+)\s*", item)
        if m:
            bound[m.group(1)] = m.group(3)
    found = set()
    for item in env.get("KAFKA_ADVERTISED_LISTENERS", "").split(","):
        m = re.fullmatch(r"\s*(\w+)://([^:]+):(\d+)\s*", item)
        if not m or m.group(2) not in names_in_network or int(m.group(3)) != KAFKA_PORT:
            continue
        listener = m.group(1)
        if bound.get(listener) != str(KAFKA_PORT):
            problems.append(f"kafka: advertised listener {listener} does not listen on "
                            f"{KAFKA_PORT} (KAFKA_LISTENERS)")
        elif protocols.get(listener, listener) != "PLAINTEXT":
            problems.append(f"kafka: listener {listener} is not PLAINTEXT, as the services "
                            "connect")
        else:
            found.add(f"{m.group(2)}:{m.group(3)}")
    if not found:
        problems.append(f"kafka: no usable in-network advertised listener {KAFKA}:{KAFKA_PORT}")
    return found, problems


def check_kafka(compose: Compose) -> Problems:
    svcs = services(compose)
    kafka = svcs.get(KAFKA) or {}
    env = env_of(kafka)
    problems = []
    if not str(kafka.get("image", "")).startswith("apache/kafka:"):
        problems.append(f"kafka: image {kafka.get('image')!r} is not apache/kafka")
    roles = {r.strip() for r in env.get("KAFKA_PROCESS_ROLES", "").split(",")}
    if not {"broker", "controller"} <= roles:
        problems.append(f"kafka: KAFKA_PROCESS_ROLES {sorted(roles)} is not KRaft "
                        "broker,controller")
    if not (env.get("KAFKA_CONTROLLER_QUORUM_VOTERS")
            and env.get("KAFKA_CONTROLLER_LISTENER_NAMES")):
        problems.append("kafka: KRaft needs KAFKA_CONTROLLER_QUORUM_VOTERS and "
                        "KAFKA_CONTROLLER_LISTENER_NAMES")
    if "KAFKA_ZOOKEEPER_CONNECT" in env:
        problems.append("kafka: KAFKA_ZOOKEEPER_CONNECT set; KRaft runs without ZooKeeper")
    check = healthcheck_of(kafka)
    if "kafka-topics" not in check or "--bootstrap-server" not in check:
        problems.append("kafka: no healthcheck running kafka-topics against the broker")
    endpoints, listener_problems = advertised_in_network(compose)
    problems += listener_problems
    for service in SERVICE_INFO:
        for kind in KINDS:
            container = name(service, kind)
            if container not in svcs:
                continue
            value = env_of(svcs[container]).get("KAFKA_BOOTSTRAP_SERVERS")
            if not value:
                problems.append(f"{container}: KAFKA_BOOTSTRAP_SERVERS is not set")
                continue
            servers = {s.strip() for s in value.split(",") if s.strip()}
            if not endpoints or not servers <= endpoints:
                problems.append(f"{container}: KAFKA_BOOTSTRAP_SERVERS {value!r} is not the "
                                f"broker's in-network listener {sorted(endpoints)}")
    return problems


def check_healthchecks(compose: Compose) -> Problems:
    svcs = services(compose)
    problems = []
    for service, (_prefix, port) in SERVICE_INFO.items():
        container = name(service, "api")
        if container not in svcs:
            continue
        test = healthcheck_of(svcs[container])
        hits = re.findall(r"https?://[^/\s'\"]+:(\d+)/healthz\b", test)
        if not hits:
            problems.append(f"{container}: no healthcheck hitting /healthz")
        elif any(int(hit) != port for hit in hits):
            problems.append(f"{container}: healthcheck hits port {hits}, not {port}")
    if not healthcheck_of(svcs.get(POSTGRES) or {}):
        problems.append("postgres: no healthcheck")
    return problems


def check_depends_on(compose: Compose) -> Problems:
    svcs = services(compose)
    problems = []

    def need(container: str, dep: str, condition: str) -> None:
        if container in svcs and depends_of(svcs[container]).get(dep) != condition:
            problems.append(f"{container}: does not depend on {dep} ({condition})")

    for service in SERVICE_INFO:
        need(name(service, "migrate"), POSTGRES, "service_healthy")
        for kind in ("api", "worker"):
            need(name(service, kind), name(service, "migrate"), "service_completed_successfully")
            need(name(service, kind), KAFKA, "service_healthy")
            need(name(service, kind), POSTGRES, "service_healthy")
        if str((svcs.get(name(service, "migrate")) or {}).get("restart", "no")) not in ("no",
                                                                                          "on-failure"):
            problems.append(f"{name(service, 'migrate')}: a one-shot must not restart always")
    need(SEED, name(SEED_OWNER, "migrate"), "service_completed_successfully")
    return problems


def check_shared_var_dir(compose: Compose) -> Problems:
    """One named volume at VAR_DIR in every app container, holding the dev keys."""
    problems = []
    top_level = set((compose.get("volumes") or {}).keys())
    volumes_used = set()
    public_keys, keyrings = set(), set()
    for container, svc in app_services(compose).items():
        env = env_of(svc)
        var_dir = env.get("VAR_DIR")
        if not var_dir or not var_dir.startswith("/"):
            problems.append(f"{container}: VAR_DIR {var_dir!r} is not an absolute path")
            continue
        sources = [src for src, target in mounts_of(svc)
                   if PurePosixPath(target) == PurePosixPath(var_dir) and is_named_volume(src)]
        if not sources:
            problems.append(f"{container}: no named volume mounted at VAR_DIR {var_dir}")
            continue
        volumes_used.update(sources)
        owner = owner_of(container)
        settings = Settings.from_env(owner if owner in SERVICE_INFO else "cli", env)
        key_files = {"JWT_PUBLIC_KEY_FILE": settings.get("JWT_PUBLIC_KEY_FILE")}
        if container in (SEED, CONSOLE):  # both sign dev tokens (seed prints, console signs in)
            key_files["JWT_PRIVATE_KEY_FILE"] = settings.get("JWT_PRIVATE_KEY_FILE")
        public_keys.add(key_files["JWT_PUBLIC_KEY_FILE"])
        if owner == "referral-intake" and container != SEED:
            key_files["PII_KEYRING_FILE"] = settings.get("PII_KEYRING_FILE")
            keyrings.add(key_files["PII_KEYRING_FILE"])
        for var, path in key_files.items():
            if not PurePosixPath(path).is_relative_to(PurePosixPath(var_dir)):
                problems.append(f"{container}: {var} {path} is outside the shared VAR_DIR volume")
    if len(volumes_used) > 1:
        problems.append(f"app containers mount different VAR_DIR volumes: {sorted(volumes_used)}")
    for volume in volumes_used - top_level:
        problems.append(f"volume {volume} is not declared under top-level volumes")
    if len(public_keys) > 1:
        problems.append(f"containers read different JWT public keys: {sorted(public_keys)}")
    if len(keyrings) > 1:
        problems.append("referral-intake containers read different PII keyrings: "
                        f"{sorted(keyrings)}")
    return problems


def check_image(compose: Compose, dockerfile: str) -> Problems:
    """Every app container runs the image the Dockerfile builds, and it installs the project."""
    problems = []
    apps = app_services(compose)
    expected = {name(s, k) for s in SERVICE_INFO for k in KINDS} | {SEED}
    for container in sorted(expected - set(apps)):
        if container in services(compose):
            problems.append(f"{container}: does not run the project's image")
    images = set()
    for container, svc in apps.items():
        build = svc.get("build")
        if isinstance(build, str):
            build = {"context": build}
        if not build:
            problems.append(f"{container}: has no build section")
            continue
        context = (ROOT / str(build.get("context", "."))).resolve()
        dockerfile_path = (context / str(build.get("dockerfile", "Dockerfile"))).resolve()
        if context != ROOT or dockerfile_path != DOCKERFILE.resolve():
            problems.append(f"{container}: builds {dockerfile_path}, not the project's Dockerfile")
        images.add(svc.get("image"))
    if len(images) > 1:
        problems.append(f"app containers run different images: {sorted(map(str, images))}")

    steps = dockerfile_instructions(dockerfile)
    args = {kind: [rest for word, rest in steps if word == kind]
            for kind in ("FROM", "COPY", "RUN", "ENV", "USER", "CMD")}
    base = args["FROM"][-1].split()[0] if args["FROM"] else ""
    if not re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base):
        problems.append(f"Dockerfile: base image {base!r} is not python:3.11-slim")
    if not any(re.search(r"\bpip\s+install\b(?:\s+-{1,2}[\w-]+(?:=\S+)?)*\s+\.(\s|$|&|;)", run)
               for run in args["RUN"]):
        problems.append("Dockerfile: does not `pip install .` the project")
    copied = [part for rest in args["COPY"] for part in shlex.split(rest)[:-1]
              if not part.startswith("--")]
    pyproject = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    needed = ["pyproject.toml", *pyproject["tool"]["setuptools"]["packages"]["find"]["where"]]
    for path in needed:
        if not any(src in (".", "./") or PurePosixPath(path).is_relative_to(
                PurePosixPath(src.rstrip("/"))) for src in copied):
            problems.append(f"Dockerfile: does not COPY {path}, which `pip install .` needs")
    users = [rest.split(":")[0].strip() for rest in args["USER"]]
    if not users or users[-1] in ("root", "0"):
        problems.append("Dockerfile: the image runs as root (no non-root USER)")
    env: dict[str, str] = {}
    for rest in args["ENV"]:
        for token in shlex.split(rest):
            key, sep, value = token.partition("=")
            if sep:
                env[key] = value
    if env.get("PYTHONUNBUFFERED") != "1":
        problems.append("Dockerfile: PYTHONUNBUFFERED is not 1")
    if env.get("API_HOST") != "0.0.0.0":
        problems.append("Dockerfile: API_HOST is not 0.0.0.0")
    for key in env:
        if key not in ENV_VARS and not key.startswith(("PYTHON", "PIP_")):
            problems.append(f"Dockerfile: sets {key}, which the code never reads")
    if not args["CMD"]:
        problems.append("Dockerfile: no default CMD")
    return problems


def all_problems(compose: Compose, init_sql: str, dockerfile: str) -> Problems:
    return [
        *check_layout(compose),
        *check_commands(compose),
        *check_ports(compose),
        *check_environment_names(compose),
        *check_databases(compose, init_sql),
        *check_kafka(compose),
        *check_healthchecks(compose),
        *check_depends_on(compose),
        *check_shared_var_dir(compose),
        *check_image(compose, dockerfile),
    ]


# --------------------------------------------------------------------------------------
# The real files pass every rule
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> Compose:
    return load_compose()


@pytest.fixture(scope="module")
def init_sql() -> str:
    return INIT_SQL_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def test_every_service_has_migrate_api_and_worker(compose: Compose) -> None:
    assert check_layout(compose) == []


def test_commands_run_the_right_existing_module(compose: Compose) -> None:
    assert check_commands(compose) == []


def test_each_api_publishes_exactly_its_port(compose: Compose) -> None:
    assert check_ports(compose) == []


def test_every_environment_variable_is_one_the_code_reads(compose: Compose) -> None:
    assert check_environment_names(compose) == []


def test_each_service_owns_its_postgres_database(compose: Compose, init_sql: str) -> None:
    assert check_databases(compose, init_sql) == []


def test_kafka_runs_kraft_and_services_use_its_in_network_listener(compose: Compose) -> None:
    assert check_kafka(compose) == []


def test_apis_have_a_healthz_healthcheck(compose: Compose) -> None:
    assert check_healthchecks(compose) == []


def test_startup_order(compose: Compose) -> None:
    assert check_depends_on(compose) == []


def test_dev_keys_live_in_one_shared_volume(compose: Compose) -> None:
    assert check_shared_var_dir(compose) == []


def test_every_app_container_runs_the_project_image(compose: Compose, dockerfile: str) -> None:
    assert check_image(compose, dockerfile) == []


def test_pip_install_ships_every_source_package() -> None:
    from setuptools import find_packages

    find = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["setuptools"][
        "packages"]["find"]
    missing = []
    for where in find["where"]:
        base = ROOT / where
        shipped = set(find_packages(str(base), include=find["include"]))
        for init in base.rglob("__init__.py"):
            package = ".".join(init.parent.relative_to(base).parts)
            if package.split(".")[0] != "tests" and package not in shipped:
                missing.append(package)
    assert missing == []


# --------------------------------------------------------------------------------------
# Every rule can fail: break a copy of the files and expect the matching problem
# --------------------------------------------------------------------------------------

Mutation = Callable[[Compose], None]


def svc(c: Compose, container: str) -> dict[str, Any]:
    return c["services"][container]


def set_env(container: str, **values: str | None) -> Mutation:
    def mutate(c: Compose) -> None:
        env = dict(env_of(svc(c, container)))
        for key, value in values.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        svc(c, container)["environment"] = env
    return mutate


def set_key(container: str, key: str, value: Any) -> Mutation:
    def mutate(c: Compose) -> None:
        if value is None:
            svc(c, container).pop(key, None)
        else:
            svc(c, container)[key] = value
    return mutate


def drop_service(container: str) -> Mutation:
    return lambda c: c["services"].pop(container)


REGISTRY_URL = "postgresql+psycopg://provider_registry:provider_registry_dev@postgres:5432/{db}"
MATCHING_URL = "postgresql+psycopg://matching:matching_dev@{host}:5432/{db}"

COMPOSE_MUTATIONS: list[tuple[str, Mutation, str]] = [
    ("drop a worker", drop_service("notifications-worker"), "notifications-worker: missing"),
    ("drop a migrate", drop_service("matching-migrate"), "matching-migrate: missing"),
    ("drop kafka", drop_service("kafka"), "kafka: missing"),
    ("drop the seed", drop_service("seed"), "seed: missing"),
    ("drop an api port", set_key("referral-intake-api", "ports", None),
     "referral-intake-api: publishes []"),
    ("api publishes the wrong host port", set_key("matching-api", "ports", ["9003:8003"]),
     "matching-api: publishes"),
    ("api publishes an extra port", set_key("matching-api", "ports", ["8003:8003", "9999:9999"]),
     "matching-api: publishes"),
    ("a worker publishes a port", set_key("matching-worker", "ports", ["9003:9003"]),
     "matching-worker: publishes"),
    ("two services on one host port", set_key("kafka", "ports", ["8002:9092"]),
     "host port 8002 is also published"),
    ("wrong <PREFIX>_PORT on an api", set_env("matching-api", MATCHING_PORT="9003"),
     "matching-api: MATCHING_PORT"),
    ("wrong <PREFIX>_PORT on a worker", set_env("matching-worker", MATCHING_PORT="9003"),
     "matching-worker: MATCHING_PORT"),
    ("api binds loopback", set_env("notifications-api", API_HOST="127.0.0.1"),
     "notifications-api: API_HOST"),
    ("variable the code never reads", set_env("referral-intake-worker", KAFKA_BROKERS="kafka:9092"),
     "sets KAFKA_BROKERS, which the code never reads"),
    ("variable of another service", set_env("matching-api", PII_KEYRING_FILE="/x.json"),
     "matching-api: sets PII_KEYRING_FILE, which only referral-intake reads"),
    ("a cli-only variable on an api", set_env("matching-api", EMBEDDED_KAFKA_PORT="9092"),
     "matching-api: sets EMBEDDED_KAFKA_PORT"),
    ("database URL missing on a worker",
     set_env("provider-registry-worker", REGISTRY_DATABASE_URL=None),
     "provider-registry-worker: REGISTRY_DATABASE_URL is not set"),
    ("database URL differs within a service",
     set_env("provider-registry-worker",
             REGISTRY_DATABASE_URL=REGISTRY_URL.format(db="provider_registry") + "?x=1"),
     "provider-registry: REGISTRY_DATABASE_URL differs"),
    ("another service's database URL",
     set_env("matching-worker", INTAKE_DATABASE_URL="postgresql+psycopg://a:b@postgres/x"),
     "matching-worker: is given INTAKE_DATABASE_URL"),
    ("database the init script does not create",
     set_env("matching-api", MATCHING_DATABASE_URL=MATCHING_URL.format(host="postgres",
                                                                       db="matching2")),
     "'matching2', which deploy/postgres-init.sql does not create"),
    ("two services share a database",
     set_env("notifications-api", NOTIFICATIONS_DATABASE_URL=MATCHING_URL.format(
         host="postgres", db="matching")),
     "not the service's own 'notifications'"),
    ("database host is not the postgres service",
     set_env("matching-api", MATCHING_DATABASE_URL=MATCHING_URL.format(host="localhost",
                                                                       db="matching")),
     "matching-api: MATCHING_DATABASE_URL host 'localhost'"),
    ("wrong driver", set_env("matching-migrate", MATCHING_DATABASE_URL="sqlite:///x.db"),
     "matching-migrate: MATCHING_DATABASE_URL scheme"),
    ("wrong password",
     set_env("matching-migrate", MATCHING_DATABASE_URL="postgresql+psycopg://matching:nope@"
             "postgres:5432/matching"),
     "matching-migrate: MATCHING_DATABASE_URL password"),
    ("another service's role",
     set_env("matching-migrate", MATCHING_DATABASE_URL="postgresql+psycopg://notifications:"
             "notifications_dev@postgres:5432/matching"),
     "logs in as 'notifications', but matching is owned by 'matching'"),
    ("seed on the wrong database",
     set_env("seed", REGISTRY_DATABASE_URL=REGISTRY_URL.format(db="referral_intake")),
     "seed: REGISTRY_DATABASE_URL is not the registry's"),
    ("seed given intake's database",
     set_env("seed", INTAKE_DATABASE_URL="postgresql+psycopg://a:b@postgres/referral_intake"),
     "seed: is given INTAKE_DATABASE_URL"),
    ("init script not mounted", set_key("postgres", "volumes", []),
     "postgres-init.sql is not mounted"),
    ("postgres 15", set_key("postgres", "image", "postgres:15"), "not PostgreSQL 16"),
    ("no postgres healthcheck", set_key("postgres", "healthcheck", None),
     "postgres: no healthcheck"),
    ("bootstrap servers on the host listener",
     set_env("matching-worker", KAFKA_BOOTSTRAP_SERVERS="localhost:29092"),
     "matching-worker: KAFKA_BOOTSTRAP_SERVERS 'localhost:29092'"),
    ("bootstrap servers missing", set_env("notifications-api", KAFKA_BOOTSTRAP_SERVERS=None),
     "notifications-api: KAFKA_BOOTSTRAP_SERVERS is not set"),
    ("kafka advertises no in-network listener",
     set_env("kafka", KAFKA_ADVERTISED_LISTENERS="PLAINTEXT://localhost:9092"),
     "no usable in-network advertised listener"),
    ("advertised listener not bound",
     set_env("kafka", KAFKA_LISTENERS="PLAINTEXT://:19092,CONTROLLER://:9093"),
     "does not listen on 9092"),
    ("in-network listener needs TLS",
     set_env("kafka", KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="PLAINTEXT:SSL,CONTROLLER:PLAINTEXT"),
     "is not PLAINTEXT"),
    ("kafka without a controller role", set_env("kafka", KAFKA_PROCESS_ROLES="broker"),
     "is not KRaft broker,controller"),
    ("kafka on zookeeper", set_env("kafka", KAFKA_ZOOKEEPER_CONNECT="zk:2181"),
     "KAFKA_ZOOKEEPER_CONNECT"),
    ("kafka without healthcheck", set_key("kafka", "healthcheck", None),
     "kafka: no healthcheck"),
    ("kafka healthcheck disabled", set_key("kafka", "healthcheck", {"disable": True}),
     "kafka: no healthcheck"),
    ("api without healthcheck", set_key("matching-api", "healthcheck", None),
     "matching-api: no healthcheck hitting /healthz"),
    ("api healthcheck on another path",
     set_key("matching-api", "healthcheck", {"test": ["CMD", "curl", "-f",
                                                      "http://127.0.0.1:8003/readyz"]}),
     "matching-api: no healthcheck hitting /healthz"),
    ("api healthcheck on another port",
     set_key("matching-api", "healthcheck", {"test": "curl -f http://127.0.0.1:8001/healthz"}),
     "matching-api: healthcheck hits port"),
    ("api runs the worker",
     set_key("matching-api", "command", ["python", "-m", "matching", "worker"]),
     "matching-api: command"),
    ("api runs another service's module",
     set_key("matching-api", "command", "python -m notifications api"),
     "matching-api: command"),
    ("module that does not exist",
     set_key("matching-api", "command", ["python", "-m", "matchmaking", "api"]),
     "module 'matchmaking' (or its __main__) does not exist"),
    ("a command the module does not have",
     set_key("matching-worker", "command", ["python", "-m", "matching", "consume"]),
     "`python -m matching` has no 'consume' command"),
    ("entrypoint override", set_key("matching-worker", "entrypoint", ["sh", "-c"]),
     "matching-worker: overrides the image's entrypoint"),
    ("seed runs something else", set_key("seed", "command", ["referrals", "up"]),
     "seed: command"),
    ("api does not wait for its migration",
     lambda c: svc(c, "matching-api")["depends_on"].pop("matching-migrate"),
     "matching-api: does not depend on matching-migrate"),
    ("worker starts before the migration finishes",
     lambda c: svc(c, "matching-worker")["depends_on"].update(
         {"matching-migrate": {"condition": "service_started"}}),
     "matching-worker: does not depend on matching-migrate"),
    ("worker does not wait for kafka",
     lambda c: svc(c, "notifications-worker")["depends_on"].pop("kafka"),
     "notifications-worker: does not depend on kafka"),
    ("migrate does not wait for postgres", set_key("matching-migrate", "depends_on", None),
     "matching-migrate: does not depend on postgres"),
    ("migrate restarts forever", set_key("matching-migrate", "restart", "always"),
     "must not restart always"),
    ("seed races the registry migration", set_key("seed", "depends_on", ["postgres"]),
     "seed: does not depend on provider-registry-migrate"),
    ("a container without the shared volume", set_key("matching-worker", "volumes", []),
     "matching-worker: no named volume mounted at VAR_DIR"),
    ("a container on a bind mount", set_key("matching-worker", "volumes",
                                            ["./var:/var/lib/referrals"]),
     "matching-worker: no named volume mounted at VAR_DIR"),
    ("a container on another volume", set_key("matching-worker", "volumes",
                                              ["other:/var/lib/referrals"]),
     "different VAR_DIR volumes"),
    ("VAR_DIR elsewhere than the volume", set_env("matching-api", VAR_DIR="/data"),
     "matching-api: no named volume mounted at VAR_DIR /data"),
    ("undeclared volume",
     lambda c: c["volumes"].pop("referrals-var"),
     "volume referrals-var is not declared"),
    ("public key outside the shared volume",
     set_env("matching-api", JWT_PUBLIC_KEY_FILE="/tmp/jwt.pem"),
     "matching-api: JWT_PUBLIC_KEY_FILE /tmp/jwt.pem is outside"),
    ("keyring outside the shared volume",
     set_env("referral-intake-worker", PII_KEYRING_FILE="/tmp/ring.json"),
     "referral-intake-worker: PII_KEYRING_FILE /tmp/ring.json is outside"),
    ("containers disagree on the public key",
     set_env("matching-api", JWT_PUBLIC_KEY_FILE="/var/lib/referrals/keys/other.pem"),
     "different JWT public keys"),
    ("a container on another image",
     lambda c: (svc(c, "matching-worker").pop("build"),
                svc(c, "matching-worker").update(image="python:3.11-slim")),
     "matching-worker: does not run the project's image"),
    ("a container built from elsewhere",
     set_key("matching-worker", "build", {"context": "./services/matching"}),
     "matching-worker: builds"),
]


@pytest.mark.parametrize(("mutation", "expected"),
                         [pytest.param(m, e, id=i) for i, m, e in COMPOSE_MUTATIONS])
def test_broken_compose_copy_is_caught(compose: Compose, init_sql: str, dockerfile: str,
                                       mutation: Mutation, expected: str) -> None:
    broken = copy.deepcopy(compose)
    mutation(broken)
    problems = all_problems(broken, init_sql, dockerfile)
    assert any(expected in p for p in problems), problems


SQL_MUTATIONS: list[tuple[str, Callable[[str], str], str]] = [
    ("a database not created",
     lambda s: re.sub(r"CREATE DATABASE matching[^;]*;", "", s),
     "database matching is not created"),
    ("a database only in a comment",
     lambda s: re.sub(r"(CREATE DATABASE notifications[^;]*;)", r"-- \1", s),
     "database notifications is not created"),
    ("a role not created",
     lambda s: re.sub(r"CREATE ROLE matching [^;]*;", "", s),
     "logs in as 'matching', a role deploy/postgres-init.sql does not create"),
    ("a database owned by someone else",
     lambda s: s.replace("CREATE DATABASE matching OWNER matching",
                         "CREATE DATABASE matching OWNER notifications"),
     "but matching is owned by 'notifications'"),
    ("a password changed",
     lambda s: s.replace("'notifications_dev'", "'rotated'"),
     "NOTIFICATIONS_DATABASE_URL password does not match"),
]


@pytest.mark.parametrize(("mutation", "expected"),
                         [pytest.param(m, e, id=i) for i, m, e in SQL_MUTATIONS])
def test_broken_init_sql_copy_is_caught(compose: Compose, init_sql: str, dockerfile: str,
                                        mutation: Callable[[str], str], expected: str) -> None:
    broken = mutation(init_sql)
    assert broken != init_sql
    problems = all_problems(compose, broken, dockerfile)
    assert any(expected in p for p in problems), problems


DOCKERFILE_MUTATIONS: list[tuple[str, Callable[[str], str], str]] = [
    ("no pip install", lambda s: re.sub(r"pip install \.", "pip --version", s),
     "does not `pip install .`"),
    ("editable install only", lambda s: re.sub(r"pip install \.", "pip install -e .[test] x", s),
     "does not `pip install .`"),
    ("another base image", lambda s: s.replace("FROM python:3.11-slim", "FROM python:3.12-slim"),
     "is not python:3.11-slim"),
    ("runs as root", lambda s: re.sub(r"(?m)^USER .*$", "USER root", s), "runs as root"),
    ("no USER", lambda s: re.sub(r"(?m)^USER .*$", "", s), "runs as root"),
    ("services not copied", lambda s: re.sub(r"(?m)^COPY services .*$", "", s),
     "does not COPY services/matching"),
    ("servicekit not copied", lambda s: re.sub(r"(?m)^COPY shared .*$", "", s),
     "does not COPY shared,"),
    ("pyproject not copied", lambda s: re.sub(r"(?m)^COPY pyproject.toml .*$", "", s),
     "does not COPY pyproject.toml"),
    ("api binds loopback", lambda s: s.replace("API_HOST=0.0.0.0", "API_HOST=127.0.0.1"),
     "API_HOST is not 0.0.0.0"),
    ("buffered output", lambda s: s.replace("PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=0"),
     "PYTHONUNBUFFERED is not 1"),
    ("unknown variable", lambda s: s.replace("VAR_DIR=", "DATA_DIR="),
     "sets DATA_DIR, which the code never reads"),
    ("no CMD", lambda s: re.sub(r"(?m)^CMD .*$", "", s), "no default CMD"),
]


@pytest.mark.parametrize(("mutation", "expected"),
                         [pytest.param(m, e, id=i) for i, m, e in DOCKERFILE_MUTATIONS])
def test_broken_dockerfile_copy_is_caught(compose: Compose, init_sql: str, dockerfile: str,
                                          mutation: Callable[[str], str], expected: str) -> None:
    broken = mutation(dockerfile)
    assert broken != dockerfile
    problems = all_problems(compose, init_sql, broken)
    assert any(expected in p for p in problems), problems
