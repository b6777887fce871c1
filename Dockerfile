# Tern in a container: built with the Rust image, run as the unprivileged user tern
# on Debian slim, with its data (spool, Maildirs, keys) in the volume /var/lib/tern.
#
#   docker build -t tern .
#   docker run -d -p 25:25 -p 465:465 -p 587:587 -v tern-data:/var/lib/tern \
#       -v ./tern.toml:/etc/tern/tern.toml:ro tern
#   docker kill -s HUP <container>      # reload the configuration
#
# Ports below 1024 are bound as tern: Docker lets any user of the container bind them
# (net.ipv4.ip_unprivileged_port_start=0 in its network namespace); elsewhere give
# the container that sysctl or --cap-add NET_BIND_SERVICE.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tern

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system tern \
    && useradd --system --gid tern --home-dir /var/lib/tern --no-create-home --shell /usr/sbin/nologin tern \
    && install -d -o tern -g tern -m 0750 /var/lib/tern \
    && install -d -m 0755 /etc/tern
COPY --from=build /src/target/release/tern /usr/sbin/tern
COPY contrib/tern.toml /etc/tern/tern.toml
RUN ln -s /usr/sbin/tern /usr/sbin/sendmail && ln -s /usr/sbin/tern /usr/bin/mailq
VOLUME /var/lib/tern
EXPOSE 25 465 587
USER tern
ENTRYPOINT ["/usr/sbin/tern"]
CMD ["serve", "--config", "/etc/tern/tern.toml"]
