# syntax=docker/dockerfile:1
#
# compute_ctl on PostgreSQL 15: a static compute_ctl supervising Postgres in one container.
#
#   docker build -t compute_ctl .
#   docker run -p 3080:3080 -p 55432:55432 -v pgdata:/var/lib/postgresql/data compute_ctl
#
# Ports: 3080 external HTTP API (/status, /configure, /terminate, /metrics, ...);
# 3081 internal HTTP API (extension server for Postgres itself: do not publish);
# 55432 PostgreSQL (set by the spec's `port` setting).
# A different spec: mount it and point -S at it, e.g.
#   docker run ... -v ./my-spec.json:/etc/compute_ctl/spec.json:ro compute_ctl
# or give all arguments yourself (they replace CMD below; see `compute_ctl --help`).

# --- build: the static musl binary -------------------------------------------------------
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# The whole tree less what .dockerignore leaves out (target/, fuzz/, .git/): cargo reads every
# target the manifest knows of, so examples/ and tests/ come along.
COPY . .
# No C code in the dependency tree, so no musl-gcc is needed. The check fails the build if
# the result asks for any shared library.
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin compute_ctl \
 && ! readelf -d target/x86_64-unknown-linux-musl/release/compute_ctl | grep -q NEEDED

# --- run: the official PostgreSQL 15 image (postgres user, /usr/lib/postgresql/15/bin) ----
FROM postgres:15-bookworm
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/compute_ctl /usr/local/bin/compute_ctl

# A local-mode spec: Postgres on 55432 for every address (remote logins use md5 passwords:
# role alice, password "secret"), with compute_ctl's catalog updates.
COPY <<'JSON' /etc/compute_ctl/spec.json
{
  "format_version": 1.0,
  "operation_uuid": "docker-local-start",
  "tenant_id": "b0554b632bd4d547a63b86c3630317e8",
  "timeline_id": "2414a61ffc94e428f14b5758fe308e13",
  "cluster": {
    "cluster_id": "docker",
    "name": "compute_ctl in Docker",
    "roles": [
      { "name": "alice", "encrypted_password": "4a0a68b43b6cd5cf266fa02f196e2371", "options": null }
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

EXPOSE 3080 3081 55432
# compute_ctl runs as root only to start Postgres as the `postgres` user (--pg-user) and to
# make PGDATA its own; it runs `initdb` itself when the volume is empty.
USER root
# The base image stops with SIGINT; compute_ctl takes SIGTERM, SIGINT and SIGQUIT alike (a fast
# shutdown of Postgres, then exit), and SIGTERM is Docker's usual signal.
STOPSIGNAL SIGTERM
# No curl in the image: compute_ctl asks its own /status (exit 0 only when `running`).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/compute_ctl", "--probe", "3080"]
ENTRYPOINT ["/usr/local/bin/compute_ctl"]
CMD ["-D", "/var/lib/postgresql/data", \
     "-C", "postgresql://cloud_admin@127.0.0.1:55432/postgres", \
     "-S", "/etc/compute_ctl/spec.json", \
     "-b", "/usr/lib/postgresql/15/bin/postgres", \
     "--pg-user", "postgres", \
     "--http-bind", "0.0.0.0", \
     "--http-port", "3080"]
