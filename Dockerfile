# syntax=docker/dockerfile:1
#
# Trellis container images, one target per component:
#
#   docker build --target proxy      -t ghcr.io/trellis-mesh/trellis-proxy:0.1.0 .
#   docker build --target identity   -t ghcr.io/trellis-mesh/trellis-identity:0.1.0 .
#   docker build --target controller -t ghcr.io/trellis-mesh/trellis-controller:0.1.0 .
#   docker build --target injector   -t ghcr.io/trellis-mesh/trellis-injector:0.1.0 .
#   docker build --target cni        -t ghcr.io/trellis-mesh/trellis-cni:0.1.0 .
#
# (Or `docker buildx bake`-style: every target but `cni` shares the one
# `build` stage, so the workspace compiles once; `cni` has a static build of
# its own, `build-cni`.) The image names and tags are the ones the
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
ARG DISTROLESS_STATIC_IMAGE=gcr.io/distroless/static-debian12

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

# --- build-cni: trellis-cni, static (musl) ------------------------------------
# The binary does not stay in its image: `trellis-cni install` copies it into
# the node's CNI binary directory, and the container runtime runs it there,
# in the host's mount namespace, with the host's libraries. A glibc build
# would depend on the node's glibc (absent on musl-based or minimal hosts,
# older on some), so it is built for x86_64-unknown-linux-musl and linked
# statically. musl-tools provides musl-gcc for the C and assembly of ring
# (rustls's crypto); nothing else in its dependency tree is C. Other
# architectures: the matching musl target and a cross C compiler.
FROM ${RUST_IMAGE} AS build-cni
WORKDIR /src
ENV RUSTUP_TOOLCHAIN=1.95.0 \
    CARGO_TERM_COLOR=never
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup toolchain install 1.95.0 --profile minimal \
 && rustup target add --toolchain 1.95.0 x86_64-unknown-linux-musl
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p trellis-cni --target x86_64-unknown-linux-musl \
 && mkdir -p /out \
 && cp target/x86_64-unknown-linux-musl/release/trellis-cni /out/

# --- cni: the CNI plugin and its node installer (the chart's DaemonSet) -------
# distroless/static: the static binary needs no libc, and the installer
# needs no shell. It runs as root (set by the chart: the host's CNI
# directories are root's) with every capability dropped.
FROM ${DISTROLESS_STATIC_IMAGE} AS cni
COPY --from=build-cni /out/trellis-cni /usr/local/bin/trellis-cni
ENTRYPOINT ["/usr/local/bin/trellis-cni"]
CMD ["install"]
