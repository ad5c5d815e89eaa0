#!/usr/bin/env python3
"""Static checks of deploy/compose/compose.yaml that need no Docker (CI runs this, plus
`docker compose config -q` where Docker Compose is installed).

- the file parses (with its YAML anchors and merge keys) and has the expected services;
- every published port is bound to 127.0.0.1;
- every econsult service is built from deploy/Dockerfile, runs `serve --services <itself>`,
  shares the data volume (one dev key) and is health-checked with `econsult health`;
  PostgreSQL with pg_isready, Redis with redis-cli ping;
- coturn and the signalling service get the same TURN secret, from .env only;
- no secret is written into the file or the example environment;
- every bind-mounted file exists in the repository.
"""

import pathlib
import re
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
ECONSULT = ["booking", "consultation", "signalling", "stats"]
OTHERS = ["migrate", "postgres", "redis", "otel-collector", "prometheus", "grafana", "coturn"]

errors = []


def fail(msg):
    errors.append(msg)


def main():
    text = (HERE / "compose.yaml").read_text()
    doc = yaml.safe_load(text)
    services = doc.get("services") or {}
    missing = [s for s in ECONSULT + OTHERS if s not in services]
    if missing:
        fail(f"services missing: {missing}")

    for name, svc in services.items():
        for port in svc.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                fail(f"{name}: port {port!r} is not bound to 127.0.0.1")
        for vol in svc.get("volumes", []):
            src = str(vol).split(":", 1)[0]
            if src.startswith("."):
                if not (HERE / src).exists():
                    fail(f"{name}: bind mount source {src} does not exist")

    for name in ECONSULT + ["migrate"]:
        svc = services.get(name, {})
        build = svc.get("build") or {}
        if build.get("dockerfile") != "deploy/Dockerfile" or not (HERE / build.get("context", "")).joinpath("deploy/Dockerfile").exists():
            fail(f"{name}: not built from deploy/Dockerfile at the repository root")
        if not any(str(v).startswith("econsult-data:/var/lib/econsult") for v in svc.get("volumes", [])):
            fail(f"{name}: does not share the econsult-data volume (dev key)")
        env = svc.get("environment") or {}
        if "ECONSULT_JWKS_FILE" in env or "ECONSULT_JWKS_URL" in env:
            fail(f"{name}: a JWKS other than the dev key's makes the dev tokens of the README useless")
        # Listening on 0.0.0.0 in a container, a server trusts the development key only when told
        # to: its JWKS in the shared volume, named as the one issuer.
        if name != "migrate" and env.get("ECONSULT_ISSUERS") != (
            "iss=econsult-dev,jwks=/var/lib/econsult/dev-jwks.json,roles=patient+clinician+ehr+ops"
        ):
            fail(f"{name}: ECONSULT_ISSUERS must trust the dev key's JWKS explicitly")
        if not str(env.get("ECONSULT_DATABASE_URL", "")).startswith("postgres://"):
            fail(f"{name}: ECONSULT_DATABASE_URL is not PostgreSQL")
        if name == "migrate":
            continue
        if svc.get("command") != ["serve", "--services", name]:
            fail(f"{name}: command is {svc.get('command')!r}")
        if not env.get("ECONSULT_REDIS_URL"):
            fail(f"{name}: no ECONSULT_REDIS_URL")
        test = (svc.get("healthcheck") or {}).get("test") or []
        if test[:3] != ["CMD", "econsult", "health"]:
            fail(f"{name}: health check is not `econsult health`: {test!r}")
        deps = svc.get("depends_on") or {}
        if (deps.get("migrate") or {}).get("condition") != "service_completed_successfully":
            fail(f"{name}: does not wait for the migration")

    def health(name):
        return " ".join(map(str, (services.get(name, {}).get("healthcheck") or {}).get("test") or []))

    if "pg_isready" not in health("postgres"):
        fail("postgres: no pg_isready health check")
    if "redis-cli ping" not in health("redis"):
        fail("redis: no redis-cli ping health check")
    if not str(services.get("postgres", {}).get("image", "")).startswith("postgres:16"):
        fail("postgres: not PostgreSQL 16")
    if not str(services.get("redis", {}).get("image", "")).startswith("redis:7"):
        fail("redis: not Redis 7")

    sig_secret = (services.get("signalling", {}).get("environment") or {}).get("ECONSULT_TURN_SECRET", "")
    turn_cmd = " ".join(map(str, services.get("coturn", {}).get("command") or []))
    if not sig_secret.startswith("${TURN_SECRET") or "--static-auth-secret=${TURN_SECRET" not in turn_cmd:
        fail("coturn and signalling must both take the secret from ${TURN_SECRET}")
    conf = (HERE / "turnserver.conf").read_text()
    if not re.search(r"^use-auth-secret\s*$", conf, re.M):
        fail("turnserver.conf: use-auth-secret missing")
    if re.search(r"^static-auth-secret", conf, re.M):
        fail("turnserver.conf: the secret belongs in .env, not in the file")

    prom = " ".join(services.get("prometheus", {}).get("volumes", []))
    if "../prometheus/econsult-rules.yml" not in prom:
        fail("prometheus: the econsult rules are not mounted")
    graf = " ".join(services.get("grafana", {}).get("volumes", []))
    if "../grafana/econsult-sla.json" not in graf:
        fail("grafana: the SLA dashboard is not mounted")

    example = (HERE / ".env.example").read_text()
    for line in example.splitlines():
        if re.match(r"^(POSTGRES_PASSWORD|TURN_SECRET|GRAFANA_ADMIN_PASSWORD)=", line) and not line.endswith("=change-me"):
            fail(f".env.example must hold placeholders only: {line.split('=')[0]}")
    if re.search(r"^\s*[A-Z_]*(PASSWORD|SECRET)[A-Z_]*:\s+(?!\$\{)\S", text, re.M) or re.search(
        r"postgres://[^:/@]+:(?!\$\{)[^@]*@", text
    ):
        fail("compose.yaml: a password or secret is written into the file; use ${VAR} from .env")
    if ".env" not in (HERE / ".gitignore").read_text().split():
        fail(".gitignore does not ignore .env")

    if errors:
        for e in errors:
            print(f"deploy/compose: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"deploy/compose: {len(services)} services checked")


if __name__ == "__main__":
    main()
