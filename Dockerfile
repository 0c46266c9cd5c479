# syntax=docker/dockerfile:1
#
# One image for every service and process kind (DESIGN.md §2, §10):
#
#   docker run IMAGE python -m referral_intake   api | worker | migrate
#   docker run IMAGE python -m provider_registry api | worker | migrate
#   docker run IMAGE python -m matching          api | worker | migrate
#   docker run IMAGE python -m notifications     api | worker | migrate
#   docker run IMAGE referrals seed | token ...
#
# Configuration comes from the environment only; shared/servicekit/settings.py (ENVIRONMENT)
# lists every variable. docker-compose.yml shows a full production-like wiring.
FROM python:3.11-slim

# API_HOST: the apis bind every interface inside a container (the code's default is
# 127.0.0.1, right for the embedded stack, unreachable through a published port).
# VAR_DIR: dev keys (JWT keypair, PII keyring) are created here on first use; compose mounts
# one named volume here for every container. Production supplies real keys instead
# (JWT_PUBLIC_KEY_FILE and PII_KEYRING from a secret store).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    API_HOST=0.0.0.0 \
    VAR_DIR=/var/lib/referrals

# A fixed, non-root uid/gid: every container writes the shared VAR_DIR volume as this user
# (the dev key files are created 0600), and orchestrators can verify runAsNonRoot.
RUN groupadd --system --gid 10001 referrals \
 && useradd --system --uid 10001 --gid referrals --create-home --home-dir /home/referrals \
        --shell /usr/sbin/nologin referrals

# Install the project (a regular, non-editable install of pyproject.toml's packages:
# servicekit and the four services, with their Alembic migrations), then drop the sources.
WORKDIR /build
COPY pyproject.toml ./
COPY shared ./shared
COPY services ./services
RUN pip install . \
 && cd / && rm -rf /build

# Owned by the app user so a fresh named volume mounted here inherits that ownership.
RUN install -d -o referrals -g referrals -m 0750 /var/lib/referrals

USER 10001:10001
WORKDIR /home/referrals

# referral-intake, provider-registry, matching, notifications (settings.SERVICE_INFO)
EXPOSE 8001 8002 8003 8004

CMD ["referrals", "--help"]
