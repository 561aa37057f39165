# jitgate: one image for every service (api, proxy, worker, slack); the command picks one.
#   docker build -t jitgate .
#   docker run --rm -v $PWD/infra/jitgate.yaml:/etc/jitgate/jitgate.yaml jitgate config check
FROM python:3.12-slim AS build
# A C compiler for setup.py, which compiles the proxy's per-message modules with mypyc; it stays
# in this stage. Debian's versions are not pinned: they move with the base image's archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md requirements.lock ./
COPY broker ./broker
COPY proxy ./proxy
COPY slackapp ./slackapp
COPY workers ./workers
# The versions CI tested (requirements.lock, as constraints).
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c requirements.lock .

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    JITGATE_CONFIG=/etc/jitgate/jitgate.yaml \
    JITGATE_DATA_DIR=/var/lib/jitgate \
    JITGATE_LOG_JSON=true
RUN groupadd --system --gid 10001 jitgate \
    && useradd --system --uid 10001 --gid jitgate --home-dir /var/lib/jitgate --shell /usr/sbin/nologin jitgate \
    && install -d -o jitgate -g jitgate -m 0700 /var/lib/jitgate \
    && install -d -o jitgate -g jitgate -m 0700 /var/lib/jitgate-keys /var/lib/jitgate-witness \
    && install -d -o jitgate -g jitgate -m 0755 /var/lib/jitgate-pub \
    && install -d -m 0755 /etc/jitgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/jitgate
# 6432: PostgreSQL wire protocol (proxy); 8080: broker API, /healthz, /readyz, /metrics.
EXPOSE 6432 8080
ENTRYPOINT ["jitgate"]
CMD ["--help"]
