# The menu for people: `just` lists the recipes. Each one calls ./dev, the single entry point
# that CI uses too (.ci/run = ./dev test), so the two never drift apart: one recipe per ./dev
# command, checked by tests/tests/repo.rs.

# List the recipes.
default:
    @just --list

# Install nats-server and mosquitto if missing (quick when already done).
setup:
    ./dev setup

# What CI runs: setup, fmt check, clippy, build, all tests.
test:
    ./dev test

# Root, hub and member on loopback, tailing the root (e.g. `just demo --for 20`).
demo *ARGS:
    ./dev demo {{ARGS}}

# Format the workspace.
fmt:
    ./dev fmt

# fmt --check and clippy -D warnings.
lint:
    ./dev lint

# The agent built again as release 0.9.0 and as a broken 0.9.1, for the update tests
# (target/update-fixtures/; `just test` does it).
update-fixtures:
    ./dev update-fixtures

# Build the fuzz targets and run each for S seconds, default 60 (e.g. `just fuzz 600 envelope`).
fuzz *ARGS:
    ./dev fuzz {{ARGS}}

# ARM release binaries: aarch64, armv7 and a static aarch64-musl (e.g. `just cross aarch64`).
cross *ARGS:
    ./dev cross {{ARGS}}

# Only install what `cross` and `arm-proof` need: Rust targets, cross gcc, zig, qemu-user.
cross-setup *ARGS:
    ./dev cross-setup {{ARGS}}

# Run the ARM binaries under qemu-user: each names its target, and a member under emulation
# reports to a native hub and root (all three targets; `just arm-proof armv7` for one).
arm-proof *ARGS:
    ./dev arm-proof {{ARGS}}

# .deb packages for amd64, arm64 and armhf in target/deb/, inspected with dpkg-deb and lintian.
deb *ARGS:
    ./dev deb {{ARGS}}

# Binary sizes per target, a member's RSS idle and loaded, start-up time (docs/benchmarks.md).
footprint:
    ./dev footprint

# The durable path beside its anchors in one run (~2 min after the release build); writes
# the dated table into docs/benchmarks.md (`just bench --smoke`: tiny counts, printed only).
bench *ARGS:
    ./dev bench {{ARGS}}

# A thousand members per hub: N = 100 and 1,000 simulated members against a real hub and root
# (~5 min after the build); writes the dated table into docs/benchmarks.md.
bench-members *ARGS:
    ./dev bench-members {{ARGS}}
