# syntax=docker/dockerfile:1
#
# Trellis container images, one target per component:
#
#   docker build --target proxy      -t ghcr.io/trellis-mesh/trellis-proxy:0.1.0 .
#   docker build --target identity   -t ghcr.io/trellis-mesh/trellis-identity:0.1.0 .
#   docker build --target controller -t ghcr.io/trellis-mesh/trellis-controller:0.1.0 .
#   docker build --target injector   -t ghcr.io/trellis-mesh/trellis-injector:0.1.0 .
#
# (Or `docker buildx bake`-style: every target shares the one `build` stage,
# so the workspace compiles once.) The image names and tags are the ones the
# Helm chart (charts/trellis) expects by default.
#
# NOTE: this file has not been built by the project's own checks: the
# development machines have no Docker engine. It was written against the
# crates' manifests (package and binary names, no C dependencies beyond
# glibc/libgcc: TLS is rustls with ring, protobufs are compiled by protox,
# no protoc) and is kept simple so it can be checked by reading.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG DISTROLESS_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG DEBIAN_IMAGE=debian:bookworm-slim

# --- build: the four binaries, release profile --------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
# rust-toolchain.toml pins 1.95.0 and asks for rustfmt and clippy, which the
# rust image does not carry and the build does not need: RUSTUP_TOOLCHAIN
# selects the pinned compiler without them. The install is a no-op when the
# image's toolchain is 1.95.0 (and fetches it if the tag moved to a 1.95.x).
ENV RUSTUP_TOOLCHAIN=1.95.0 \
    CARGO_TERM_COLOR=never
RUN rustup toolchain install 1.95.0 --profile minimal
COPY . .
# Cache mounts keep the registry and target directory between builds; the
# binaries are copied out of the (cached, so unexported) target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p trellis-proxy -p trellis-identity -p trellis-controller -p trellis-injector \
 && mkdir -p /out \
 && for bin in trellis-proxy trellis-identity trellis-controller trellis-injector; do \
        cp "target/release/$bin" /out/; \
    done

# --- proxy: the sidecar and `trellis-proxy init` ------------------------------
# Debian slim, not distroless: `trellis-proxy init` runs iptables-restore /
# ip6tables-restore (nft or legacy). The xtables binaries carry file
# capabilities so that a non-root init container (the injector's
# proxyInit.runAsRoot=false) gets NET_ADMIN and NET_RAW on exec; the pod must
# still add those capabilities and allow privilege escalation (no_new_privs
# would void file capabilities). The sidecar itself runs as uid 7102 (set by
# the injector) and needs no capability.
FROM ${DEBIAN_IMAGE} AS proxy
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables libcap2-bin ca-certificates \
 && setcap cap_net_admin,cap_net_raw+ep /usr/sbin/xtables-nft-multi \
 && setcap cap_net_admin,cap_net_raw+ep /usr/sbin/xtables-legacy-multi \
 && apt-get purge -y --auto-remove libcap2-bin \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/trellis-proxy /usr/local/bin/trellis-proxy
USER 7102:7102
EXPOSE 7140 7143 7191
ENTRYPOINT ["/usr/local/bin/trellis-proxy"]

# --- identity: the mesh CA ----------------------------------------------------
FROM ${DISTROLESS_IMAGE} AS identity
COPY --from=build /out/trellis-identity /usr/local/bin/trellis-identity
USER 65532:65532
EXPOSE 7155 7195
ENTRYPOINT ["/usr/local/bin/trellis-identity"]

# --- controller: discovery, routes and policy ---------------------------------
FROM ${DISTROLESS_IMAGE} AS controller
COPY --from=build /out/trellis-controller /usr/local/bin/trellis-controller
USER 65532:65532
EXPOSE 7156 7196
ENTRYPOINT ["/usr/local/bin/trellis-controller"]

# --- injector: the admission webhook ------------------------------------------
FROM ${DISTROLESS_IMAGE} AS injector
COPY --from=build /out/trellis-injector /usr/local/bin/trellis-injector
USER 65532:65532
EXPOSE 7157 7197
ENTRYPOINT ["/usr/local/bin/trellis-injector"]
