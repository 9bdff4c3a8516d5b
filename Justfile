# The menu for people: `just` lists the recipes. Each one calls ./dev, the single entry point
# that CI uses too (.ci/run = ./dev test), so the two never drift apart.

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
