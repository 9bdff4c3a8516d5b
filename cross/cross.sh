# cross/cross.sh — ARM builds, their qemu proof and the .deb packages. Sourced by ./dev
# (./dev cross | cross-setup | arm-proof | deb); uses its helpers (say, die, apt_install,
# pip_install, python_script_dirs, LOCKED).
#
# Targets (short name → Rust target):
#   aarch64       aarch64-unknown-linux-gnu       Raspberry Pi OS 64-bit (Pi 3/4/5), Debian arm64
#   armv7         armv7-unknown-linux-gnueabihf   Raspberry Pi OS 32-bit (Pi 2/3/4), Debian armhf
#   aarch64-musl  aarch64-unknown-linux-musl      fully static: any aarch64 Linux, one file
#
# The glibc targets link with Debian's cross gcc; the C parts of the tree (SQLite through
# rusqlite's `bundled`, ring's assembly and C) are compiled by the cc crate with the same
# gcc, told through CC_<target>/AR_<target> here rather than in a .cargo/config that would
# apply to every build. The musl target goes through cargo-zigbuild with zig as the C
# compiler and linker (both from PyPI: `ziglang`, `cargo-zigbuild`), which brings its own
# musl libc. qemu-user-static runs the results on x86 without binfmt_misc.

CROSS_ALL=(aarch64 armv7 aarch64-musl)

cross_triple() { # short name or triple → triple
    case "$1" in
        aarch64 | aarch64-unknown-linux-gnu) echo aarch64-unknown-linux-gnu ;;
        armv7 | armv7-unknown-linux-gnueabihf) echo armv7-unknown-linux-gnueabihf ;;
        aarch64-musl | aarch64-unknown-linux-musl) echo aarch64-unknown-linux-musl ;;
        *) die "unknown cross target '$1' (one of: ${CROSS_ALL[*]})" ;;
    esac
}

cross_short() { # triple → short name
    case "$1" in
        aarch64-unknown-linux-gnu) echo aarch64 ;;
        armv7-unknown-linux-gnueabihf) echo armv7 ;;
        aarch64-unknown-linux-musl) echo aarch64-musl ;;
    esac
}

# The prefix of Debian's cross binutils/gcc for a glibc triple (empty for musl).
cross_gcc_prefix() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo aarch64-linux-gnu ;;
        armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf ;;
    esac
}

# Debian's packages for a glibc triple: the cross gcc and libc (the latter also gives qemu
# the dynamic loader, under /usr/<prefix>).
cross_apt_packages() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo gcc-aarch64-linux-gnu libc6-dev-arm64-cross ;;
        armv7-unknown-linux-gnueabihf) echo gcc-arm-linux-gnueabihf libc6-dev-armhf-cross ;;
    esac
}

cross_qemu() { # triple → the qemu-user program that runs it
    case "$1" in
        aarch64-*) echo qemu-aarch64-static ;;
        armv7-*) echo qemu-arm-static ;;
    esac
}

# The environment variable the e2e proof (tests/tests/arm_qemu.rs) reads the binary from.
cross_proof_env() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo NEXUS_E2E_AARCH64_BIN ;;
        armv7-unknown-linux-gnueabihf) echo NEXUS_E2E_ARMV7_BIN ;;
        aarch64-unknown-linux-musl) echo NEXUS_E2E_AARCH64_MUSL_BIN ;;
    esac
}

# cargo-zigbuild from pip, on PATH for `cargo zigbuild`.
ensure_zigbuild() {
    local dir
    while IFS= read -r dir; do
        [ -n "$dir" ] && [ -d "$dir" ] && case ":$PATH:" in *":$dir:"*) ;; *) PATH="$dir:$PATH" ;; esac
    done < <(python_script_dirs)
    export PATH
    if ! cargo zigbuild --help >/dev/null 2>&1 || ! python3 -m ziglang version >/dev/null 2>&1; then
        say "installing cargo-zigbuild and zig (pip: cargo-zigbuild ziglang)"
        pip_install cargo-zigbuild ziglang
        cargo zigbuild --help >/dev/null 2>&1 || die "cargo-zigbuild still not usable after pip install (looked in: $(python_script_dirs | tr '\n' ' ')and PATH)"
    fi
}

# Installs what building (and, with "qemu", running) TRIPLE needs; quick when present.
ensure_cross() { # ensure_cross TRIPLE [qemu]
    local triple="$1" want_qemu="${2:-}" prefix packages=()
    if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
        command -v rustup >/dev/null 2>&1 || die "rustup not found: cannot add the Rust target $triple"
        say "rustup target add $triple"
        rustup target add "$triple" >/dev/null
    fi
    prefix="$(cross_gcc_prefix "$triple")"
    if [ -n "$prefix" ] && { ! command -v "$prefix-gcc" >/dev/null 2>&1 || [ ! -d "/usr/$prefix/lib" ]; }; then
        read -r -a packages <<<"$(cross_apt_packages "$triple")"
    fi
    if [ -n "$want_qemu" ] && ! command -v "$(cross_qemu "$triple")" >/dev/null 2>&1; then
        packages+=(qemu-user-static)
    fi
    [ ${#packages[@]} -eq 0 ] || apt_install "${packages[@]}"
    case "$triple" in *-musl) ensure_zigbuild ;; esac
}

# Where cargo puts TRIPLE's binary for PROFILE.
cross_bin_path() { # cross_bin_path TRIPLE PROFILE
    local dir="$2"
    [ "$2" = dev ] && dir=debug
    printf '%s/%s/%s/nexus-agent\n' "${CARGO_TARGET_DIR:-$ROOT/target}" "$1" "$dir"
}

# What the boxes' binaries leave out: unwind tables. The profiles that build them abort on
# panic (profile.release, profile.arm-proof), so nothing unwinds, and a stripped binary's
# backtrace has no names anyway; the panic message and its file:line stay. It saves ~330 KB
# (4 %) of the aarch64 binary (docs/benchmarks.md, "Event contract", the binary against its
# budget). The flags go to the target only: an explicit --target keeps RUSTFLAGS off build
# scripts and proc macros. The C flags reach the target's C code (the bundled SQLite, ring).
CROSS_RUSTFLAGS="-C force-unwind-tables=no"
CROSS_CFLAGS="-fno-asynchronous-unwind-tables -fno-unwind-tables"

# Builds nexus-agent for TRIPLE with PROFILE (default release); logs go to stderr.
cross_build_one() { # cross_build_one TRIPLE [PROFILE]
    local triple="$1" profile="${2:-release}" prefix upper
    prefix="$(cross_gcc_prefix "$triple")"
    say "cargo build -p nexus-agent --profile $profile --target $triple"
    # Only where panics abort: with panic = "unwind" (dev) the tables of every function
    # that may unwind stay anyway, and dev builds keep their backtraces.
    local flags=()
    case "$profile" in
        release | arm-proof)
            flags=("RUSTFLAGS=${RUSTFLAGS:+$RUSTFLAGS }$CROSS_RUSTFLAGS"
                "CFLAGS_${triple//-/_}=$CROSS_CFLAGS") ;;
    esac
    if [ -n "$prefix" ]; then
        upper="$(printf '%s' "$triple" | tr 'a-z-' 'A-Z_')"
        env "${flags[@]}" "CC_${triple//-/_}=$prefix-gcc" "AR_${triple//-/_}=$prefix-ar" \
            "CARGO_TARGET_${upper}_LINKER=$prefix-gcc" \
            cargo build -p nexus-agent --profile "$profile" --target "$triple" "${LOCKED[@]}" >&2
    else
        env "${flags[@]}" \
            cargo zigbuild -p nexus-agent --profile "$profile" --target "$triple" "${LOCKED[@]}" >&2
    fi
    local bin
    bin="$(cross_bin_path "$triple" "$profile")"
    [ -x "$bin" ] || die "the build succeeded but $bin is missing"
}

cmd_cross_setup() { # cross-setup [TARGET...]
    local targets=("$@") t
    [ ${#targets[@]} -gt 0 ] || targets=("${CROSS_ALL[@]}")
    say "cross setup"
    for t in "${targets[@]}"; do ensure_cross "$(cross_triple "$t")" qemu; done
    printf '  %-14s %s\n' rustup-targets "$(rustup target list --installed | tr '\n' ' ')"
    for t in aarch64-linux-gnu-gcc arm-linux-gnueabihf-gcc qemu-aarch64-static qemu-arm-static cargo-zigbuild; do
        printf '  %-23s %s\n' "$t" "$(command -v "$t" || echo -)"
    done
    printf '  %-23s %s\n' zig "$(python3 -m ziglang version 2>/dev/null || echo -)"
}

cmd_cross() { # cross [--profile P] [TARGET...] — release binaries, sizes printed
    ci_env
    local profile=release targets=() t triple bin
    while [ $# -gt 0 ]; do
        case "$1" in
            --profile) [ $# -ge 2 ] || die "--profile needs a name"; profile="$2"; shift 2 ;;
            --profile=*) profile="${1#--profile=}"; shift ;;
            *) targets+=("$1"); shift ;;
        esac
    done
    [ ${#targets[@]} -gt 0 ] || targets=("${CROSS_ALL[@]}")
    for t in "${targets[@]}"; do
        triple="$(cross_triple "$t")"
        ensure_cross "$triple"
        cross_build_one "$triple" "$profile"
    done
    say "binaries ($profile)"
    for t in "${targets[@]}"; do
        triple="$(cross_triple "$t")"
        bin="$(cross_bin_path "$triple" "$profile")"
        printf '  %-32s %9s bytes  %s\n' "$triple" "$(stat -c %s "$bin")" "${bin#"$ROOT"/}"
    done
}

# The qemu proof: each binary's --version, then a member under qemu reporting to a native
# hub and root (tests/tests/arm_qemu.rs). PROFILE: release by default; ./dev test uses
# arm-proof (same code, no LTO: a fraction of the build time).
cmd_arm_proof() { # arm-proof [--profile P] [TARGET...]
    ci_env
    local profile=release targets=() t triple
    while [ $# -gt 0 ]; do
        case "$1" in
            --profile) [ $# -ge 2 ] || die "--profile needs a name"; profile="$2"; shift 2 ;;
            --profile=*) profile="${1#--profile=}"; shift ;;
            *) targets+=("$1"); shift ;;
        esac
    done
    [ ${#targets[@]} -gt 0 ] || targets=("${CROSS_ALL[@]}")
    [ -n "${NATS_SERVER_BIN:-}" ] || cmd_setup
    local envs=()
    for t in "${targets[@]}"; do
        triple="$(cross_triple "$t")"
        ensure_cross "$triple" qemu
        cross_build_one "$triple" "$profile"
        envs+=("$(cross_proof_env "$triple")=$(cross_bin_path "$triple" "$profile")")
    done
    say "cargo build -p nexus-agent (the native hub and root)"
    cargo build -p nexus-agent "${LOCKED[@]}"
    say "qemu proof: ${targets[*]} (a target not built here says SKIPPED)"
    if have_nextest; then
        env "${envs[@]}" cargo nextest run -p nexus-e2e --test arm_qemu --no-fail-fast \
            --no-capture "${LOCKED[@]}"
    else
        env "${envs[@]}" cargo test -p nexus-e2e --test arm_qemu --no-fail-fast "${LOCKED[@]}" \
            -- --nocapture
    fi
}

# ---------------------------------------------------------------------------------------------
# .deb packages, assembled with dpkg-deb from the binaries built above (no extra tool to
# install: dpkg-deb is in every Debian). Contents:
#   /usr/bin/nexus-agent
#   /lib/systemd/system/nexus-agent.service      (cross/deb/nexus-agent.service)
#   /etc/nexus-agent/examples/{member,hub,root}.toml   (conffiles, from config/examples)
#   /usr/share/nexus-agent/events/NAME/VERSION/  (the built-in event registry, for reading:
#                                                 the binary embeds it; docs/events.md)
#   /etc/nexus-agent/examples/events/            (the member example's own registry)
#   /usr/share/doc/nexus-agent/                  (copyright, changelog, deploy guide)
# Maintainer scripts (cross/deb/): the nexus-agent system user and /var/lib/nexus-agent.

deb_triple() { # Debian architecture → Rust target
    case "$1" in
        amd64) echo x86_64-unknown-linux-gnu ;;
        arm64) echo aarch64-unknown-linux-gnu ;;
        armhf) echo armv7-unknown-linux-gnueabihf ;;
        *) die "unknown Debian architecture '$1' (one of: amd64 arm64 armhf)" ;;
    esac
}

# Depends: from the binary's NEEDED libraries and the newest glibc symbol version it uses.
deb_depends() { # deb_depends BINARY
    local bin="$1" needed glibc deps=()
    needed="$(readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')"
    glibc="$(readelf -W --dyn-syms "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1)"
    [ -z "$needed" ] || deps+=("libc6${glibc:+ (>= $glibc)}")
    if grep -q '^libgcc_s' <<<"$needed"; then deps+=("libgcc-s1"); fi
    deps+=(adduser)
    local IFS=,
    printf '%s' "${deps[*]}" | sed 's/,/, /g'
}

deb_build_one() { # deb_build_one ARCH BINARY OUTDIR
    local arch="$1" bin="$2" out="$3"
    local version stage name
    version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n1)"
    [ -n "$version" ] || die "no workspace version in Cargo.toml"
    name="nexus-agent_${version}_${arch}"
    stage="$out/$name"
    rm -rf "$stage"
    install -d -m 0755 "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" \
        "$stage/etc/nexus-agent/examples" "$stage/usr/share/nexus-agent" \
        "$stage/usr/share/doc/nexus-agent"
    install -m 0755 "$bin" "$stage/usr/bin/nexus-agent"
    install -m 0644 "$ROOT/cross/deb/nexus-agent.service" "$stage/lib/systemd/system/"
    local f
    for f in "$ROOT"/config/examples/*.toml; do
        install -m 0644 "$f" "$stage/etc/nexus-agent/examples/"
    done
    # The registries: directories of NAME/VERSION/{schema.json, event.toml, examples/}.
    cp -R "$ROOT/events/registry" "$stage/usr/share/nexus-agent/events"
    cp -R "$ROOT/config/examples/events" "$stage/etc/nexus-agent/examples/events"
    find "$stage/usr/share/nexus-agent/events" "$stage/etc/nexus-agent/examples/events" \
        -type d -exec chmod 0755 {} + -o -type f -exec chmod 0644 {} +
    install -m 0644 "$ROOT/docs/deploy-raspberry-pi.md" "$stage/usr/share/doc/nexus-agent/"
    cat >"$stage/usr/share/doc/nexus-agent/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: nexus-agent
Source: https://example.invalid/nexus-agent

Files: *
Copyright: 2026 the nexus-agent authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
    # A fixed date keeps the package reproducible (the commit's date, else now).
    local date
    date="$(git -C "$ROOT" log -1 --format=%aD 2>/dev/null || date -R)"
    printf 'nexus-agent (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- nexus-agent maintainers <nexus-agent@example.invalid>  %s\n' \
        "$version" "$version" "$date" | gzip -9n >"$stage/usr/share/doc/nexus-agent/changelog.gz"
    chmod 0644 "$stage/usr/share/doc/nexus-agent/changelog.gz"
    for f in postinst prerm postrm; do
        install -m 0755 "$ROOT/cross/deb/$f" "$stage/DEBIAN/$f"
    done
    (cd "$stage" && find etc -type f | sed 's|^|/|' | sort) >"$stage/DEBIAN/conffiles"
    chmod 0644 "$stage/DEBIAN/conffiles"
    local size
    size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
    cat >"$stage/DEBIAN/control" <<CONTROL
Package: nexus-agent
Version: $version
Architecture: $arch
Maintainer: nexus-agent maintainers <nexus-agent@example.invalid>
Installed-Size: $size
Depends: $(deb_depends "$bin")
Section: net
Priority: optional
Homepage: https://example.invalid/nexus-agent
Description: edge fleet agent bridging local MQTT and NATS to a signed event stream
 One binary for every tier of an edge fleet: a member on an edge box
 (Raspberry Pi), a hub per site, a root in the cloud. Members sign every
 event and keep it in a durable outbox until their hub has stored it; hubs
 and the root verify every signature and capability token.
 .
 Runs as the systemd service nexus-agent, with its state in
 /var/lib/nexus-agent; example configs are in /etc/nexus-agent/examples.
CONTROL
    dpkg-deb --build --root-owner-group -Zxz "$stage" "$out/$name.deb" >/dev/null
    rm -rf "$stage"
    printf '%s\n' "$out/$name.deb"
}

# Lists a package and runs lintian on it (errors fail; warnings are shown).
deb_inspect() { # deb_inspect DEB
    local deb="$1"
    say "dpkg-deb -c ${deb#"$ROOT"/}"
    dpkg-deb -c "$deb" | awk '{printf "  %s %s %9s %s\n", $1, $2, $3, $6}'
    dpkg-deb -f "$deb" Package Version Architecture Depends | sed 's/^/  /'
    if command -v lintian >/dev/null 2>&1; then
        say "lintian ${deb#"$ROOT"/}"
        # Tags that do not apply: a native package without a Debian source, and a daemon
        # whose manual is its --help and docs/.
        local report rc=0
        report="$(lintian --fail-on error --suppress-tags \
            no-manual-page,initial-upload-closes-no-bugs,maintainer-script-calls-systemctl \
            "$deb" 2>&1)" || rc=$?
        report="$(grep -v 'running with root privileges' <<<"$report" || true)"
        printf '%s\n' "${report:-(no tags)}" | sed 's/^/  /'
        [ "$rc" = 0 ] || die "lintian found errors in $deb"
    fi
}

deb_tools() {
    command -v dpkg-deb >/dev/null 2>&1 || apt_install dpkg
    command -v lintian >/dev/null 2>&1 || apt_install lintian
}

# One package from an existing binary, inspected (./dev test: the packaging check).
deb_check() { # deb_check ARCH BINARY
    deb_tools
    local out="${CARGO_TARGET_DIR:-$ROOT/target}/deb-check"
    mkdir -p "$out"
    deb_inspect "$(deb_build_one "$1" "$2" "$out")"
}

cmd_deb() { # deb [--profile P] [ARCH...]
    ci_env
    local profile=release arches=() arch triple bin out debs=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --profile) [ $# -ge 2 ] || die "--profile needs a name"; profile="$2"; shift 2 ;;
            --profile=*) profile="${1#--profile=}"; shift ;;
            *) arches+=("$1"); shift ;;
        esac
    done
    [ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64 armhf)
    deb_tools
    out="${CARGO_TARGET_DIR:-$ROOT/target}/deb"
    mkdir -p "$out"
    for arch in "${arches[@]}"; do
        triple="$(deb_triple "$arch")"
        if [ "$arch" = amd64 ]; then
            say "cargo build -p nexus-agent --profile $profile"
            cargo build -p nexus-agent --profile "$profile" "${LOCKED[@]}"
            bin="${CARGO_TARGET_DIR:-$ROOT/target}/$([ "$profile" = dev ] && echo debug || echo "$profile")/nexus-agent"
        else
            ensure_cross "$triple"
            cross_build_one "$triple" "$profile"
            bin="$(cross_bin_path "$triple" "$profile")"
        fi
        debs+=("$(deb_build_one "$arch" "$bin" "$out")")
    done
    for deb in "${debs[@]}"; do deb_inspect "$deb"; done
    say "packages"
    for deb in "${debs[@]}"; do
        printf '  %9s bytes  %s\n' "$(stat -c %s "$deb")" "${deb#"$ROOT"/}"
    done
}

# ---------------------------------------------------------------------------------------------
# Footprint (docs/benchmarks.md): release binary sizes per target, then a native member's
# start-up time and RSS idle and loaded (tests/benches/footprint.rs).
cmd_footprint() {
    ci_env
    cmd_setup
    cmd_cross "${CROSS_ALL[@]}"
    say "cargo build --release -p nexus-agent (native)"
    cargo build --release -p nexus-agent "${LOCKED[@]}"
    say "release binaries (stripped: profile.release has strip = true)"
    local bin triple
    for triple in x86_64-unknown-linux-gnu $(for t in "${CROSS_ALL[@]}"; do cross_triple "$t"; done); do
        if [ "$triple" = x86_64-unknown-linux-gnu ]; then
            bin="${CARGO_TARGET_DIR:-$ROOT/target}/release/nexus-agent"
        else
            bin="$(cross_bin_path "$triple" release)"
        fi
        printf '  %-32s %9s bytes  %5.2f MiB\n' "$triple" "$(stat -c %s "$bin")" \
            "$(awk -v b="$(stat -c %s "$bin")" 'BEGIN { print b / 1048576 }')"
    done
    # Every agent (member, hub, root) is the release binary; the harness itself only
    # spawns, samples /proc and counts, so it is built with the dev profile (quick).
    say "cargo bench --profile dev -p nexus-e2e --bench footprint"
    NEXUS_E2E_AGENT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/nexus-agent" \
        cargo bench --profile dev -p nexus-e2e --bench footprint "${LOCKED[@]}"
}
