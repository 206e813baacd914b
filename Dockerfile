# syntax=docker/dockerfile:1
#
# compute_ctl on PostgreSQL 15: a static compute_ctl supervising Postgres in one container.
#
#   docker build -t compute_ctl .      (this machine's architecture)
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/compute_ctl --push .
#   docker run -p 3080:3080 -p 55432:55432 -v pgdata:/var/lib/postgresql/data \
#       -v ./token:/run/secrets/compute_ctl_token:ro -e APP_PASSWORD_FILE=/run/secrets/app_pw \
#       -v ./app_pw:/run/secrets/app_pw:ro compute_ctl
#
# The image holds no credentials (see the entrypoint below and the README's Docker section):
# the API token and the example role's password come from mounted files or the environment.
# Ports: 3080 external HTTP API; 55432 PostgreSQL (set by the spec's `port` setting). The
# internal API (3081, for Postgres itself) listens on the container's loopback only.

# --- build: the static musl binary for the image's architecture ---------------------------
# Runs on the builder's own platform and cross-compiles (rust-lld links, no C toolchain, see
# .cargo/config.toml), so an arm64 image builds at native speed on an amd64 host and the other
# way round. TARGETARCH (set by BuildKit for each --platform) picks the Rust target inside
# .ci/build-static: amd64 -> x86_64-unknown-linux-musl, arm64 -> aarch64-unknown-linux-musl;
# any other architecture fails the build with a message. .ci/run runs the same script for both.
FROM --platform=$BUILDPLATFORM rust:1.95.0-slim-bookworm AS build
# `file` for the static check (readelf comes with the image's binutils).
RUN apt-get update && apt-get install -y --no-install-recommends file && rm -rf /var/lib/apt/lists/*
ARG TARGETARCH
WORKDIR /src
# Dependencies first, in a layer that depends only on the manifest, the lock file and the build
# settings: a dummy main.rs and lib.rs make cargo fetch and compile every crate of Cargo.lock, so
# an edit of our sources rebuilds compute_ctl alone.
COPY Cargo.toml Cargo.lock ./
COPY .cargo/ .cargo/
COPY .ci/build-static .ci/
RUN mkdir src && echo 'fn main() {}' >src/main.rs && touch src/lib.rs \
 && .ci/build-static "$TARGETARCH" deps && rm -r src
# Then the whole tree less what .dockerignore leaves out (target/, fuzz/, .git/, dist/): cargo
# reads every target the manifest knows of, so examples/ and tests/ come along. The script fails
# the build unless the binary is a static ELF for TARGETARCH of at most 4 MiB.
COPY . .
RUN out=$(.ci/build-static "$TARGETARCH") && echo "$out" && cp "$(echo "$out" | tail -n1)" /compute_ctl

# --- run: the official PostgreSQL 15 image (postgres user, /usr/lib/postgresql/15/bin) ----
# Pinned like the build image; it exists for linux/amd64 and linux/arm64 (and more).
FROM postgres:15.18-bookworm
COPY --from=build /compute_ctl /usr/local/bin/compute_ctl

# The example local-mode spec: Postgres on 55432 for every address, role `alice` (who logs in
# with her password; the hash is filled in at start, never stored in the image) owning `appdb`.
COPY <<'JSON' /etc/compute_ctl/spec.template.json
{
  "format_version": 1.0,
  "operation_uuid": "docker-local-start",
  "tenant_id": "b0554b632bd4d547a63b86c3630317e8",
  "timeline_id": "2414a61ffc94e428f14b5758fe308e13",
  "cluster": {
    "cluster_id": "docker",
    "name": "compute_ctl in Docker",
    "roles": [
      { "name": "alice", "encrypted_password": "@ALICE_MD5@", "options": null }
    ],
    "databases": [
      { "name": "appdb", "owner": "alice", "options": null }
    ],
    "settings": [
      { "name": "port", "value": "55432", "vartype": "integer" },
      { "name": "listen_addresses", "value": "*", "vartype": "string" },
      { "name": "unix_socket_directories", "value": "/var/run/postgresql", "vartype": "string" },
      { "name": "max_connections", "value": "100", "vartype": "integer" },
      { "name": "shared_buffers", "value": "128MB", "vartype": "string" },
      { "name": "wal_level", "value": "logical", "vartype": "enum" }
    ]
  }
}
JSON

# The entrypoint turns what was mounted or set into arguments; the image holds no secret.
# - API token: the file $COMPUTE_CTL_TOKEN_FILE (default /run/secrets/compute_ctl_token). With
#   it, the API listens on every address and every route but /metrics needs the token; without
#   it, the API is unauthenticated and listens on the container's loopback only (publishing
#   3080 then reaches nothing), unless --http-bind is given as an argument.
# - alice's password: $APP_PASSWORD_FILE (a mounted file) or $APP_PASSWORD. With one, the
#   example spec starts at once; with neither, compute_ctl starts in `empty` and waits for
#   POST /configure with your spec.
# Arguments given to `docker run IMAGE ...` are appended (see `compute_ctl --help`).
COPY --chmod=0755 <<'SH' /usr/local/bin/compute_ctl-entrypoint
#!/bin/sh
set -eu
token="${COMPUTE_CTL_TOKEN_FILE:-/run/secrets/compute_ctl_token}"
set -- -D /var/lib/postgresql/data -C postgresql://cloud_admin@127.0.0.1:55432/postgres \
    -b /usr/lib/postgresql/15/bin/postgres --pg-user postgres --external-http-port 3080 "$@"
if [ -f "$token" ]; then
    # 0.0.0.0 rather than the default ::, which fails where IPv6 is switched off.
    set -- --http-auth-token-file "$token" --http-bind 0.0.0.0 "$@"
fi
password=""
if [ -n "${APP_PASSWORD_FILE:-}" ]; then
    password="$(cat "$APP_PASSWORD_FILE")"
elif [ -n "${APP_PASSWORD:-}" ]; then
    password="$APP_PASSWORD"
fi
if [ -n "$password" ]; then
    # md5(password || role name), as a Neon spec carries it; written where only root reads.
    hash="$(printf '%s%s' "$password" alice | md5sum | cut -d' ' -f1)"
    umask 077
    mkdir -p /run/compute_ctl
    sed "s/@ALICE_MD5@/$hash/" /etc/compute_ctl/spec.template.json > /run/compute_ctl/spec.json
    set -- -S /run/compute_ctl/spec.json "$@"
fi
exec /usr/local/bin/compute_ctl "$@"
SH

EXPOSE 3080 55432
# compute_ctl runs as root only to start Postgres as the `postgres` user (--pg-user) and to
# make PGDATA its own; it runs `initdb` itself when the volume is empty.
USER root
# The base image stops with SIGINT; compute_ctl takes SIGTERM, SIGINT and SIGQUIT alike (a fast
# shutdown of Postgres, then exit), and SIGTERM is Docker's usual signal.
STOPSIGNAL SIGTERM
# No curl in the image: compute_ctl reads its own public /metrics (exit 0 only when `running`).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/compute_ctl", "--probe", "3080"]
# exec form, so compute_ctl (exec'd by the script) is PID 1 and gets the stop signal.
ENTRYPOINT ["/usr/local/bin/compute_ctl-entrypoint"]
CMD []
