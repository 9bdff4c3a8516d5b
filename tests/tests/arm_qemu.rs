//! ARM builds, proven under qemu-user: a cross-built `nexus-agent` names its target, and a
//! member running under `qemu-aarch64-static` / `qemu-arm-static` joins a native (x86) hub
//! and root, its heartbeats reaching a subscriber on the root's NATS, signed by its key;
//! SIGTERM stops it cleanly.
//!
//! The binaries come from `./dev cross` (CI: `./dev test` builds all three with the
//! `arm-proof` profile and passes them here); each test names its variable:
//! - `NEXUS_E2E_AARCH64_BIN`: `aarch64-unknown-linux-gnu` (Raspberry Pi OS 64-bit)
//! - `NEXUS_E2E_ARMV7_BIN`: `armv7-unknown-linux-gnueabihf` (Raspberry Pi OS 32-bit)
//! - `NEXUS_E2E_AARCH64_MUSL_BIN`: `aarch64-unknown-linux-musl` (static, any aarch64 Linux)
//!
//! A test whose variable is unset says so and passes without running: a plain
//! `cargo nextest run` on a machine without cross toolchains must not fail. `./dev test`
//! and `./dev arm-proof` set all three.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nexus_e2e::releases::{publish_release, start_rollout, update_state};
use nexus_e2e::{collect_until, fleet, Fleet, Launch};
use nexus_federation::envelope::MAX_ENVELOPE_BYTES;
use nexus_federation::{NatsProvenance as _, SignedEvent};

/// Start-up under emulation (qemu-user runs the agent ~5-10× slower) on a loaded 2-core box.
const STARTUP: Duration = Duration::from_secs(60);

/// ELF `e_machine` values.
const EM_ARM: u16 = 40;
const EM_AARCH64: u16 = 183;

struct ArmTarget {
    triple: &'static str,
    env: &'static str,
    qemu: &'static str,
    /// Where Debian's cross libc lives (the dynamic loader and libc the binary needs);
    /// `None` for a static binary.
    sysroot: Option<&'static str>,
    machine: u16,
    elf64: bool,
}

const AARCH64: ArmTarget = ArmTarget {
    triple: "aarch64-unknown-linux-gnu",
    env: "NEXUS_E2E_AARCH64_BIN",
    qemu: "qemu-aarch64-static",
    sysroot: Some("/usr/aarch64-linux-gnu"),
    machine: EM_AARCH64,
    elf64: true,
};
const ARMV7: ArmTarget = ArmTarget {
    triple: "armv7-unknown-linux-gnueabihf",
    env: "NEXUS_E2E_ARMV7_BIN",
    qemu: "qemu-arm-static",
    sysroot: Some("/usr/arm-linux-gnueabihf"),
    machine: EM_ARM,
    elf64: false,
};
const AARCH64_MUSL: ArmTarget = ArmTarget {
    triple: "aarch64-unknown-linux-musl",
    env: "NEXUS_E2E_AARCH64_MUSL_BIN",
    qemu: "qemu-aarch64-static",
    sysroot: None,
    machine: EM_AARCH64,
    elf64: true,
};

#[tokio::test(flavor = "multi_thread")]
async fn aarch64_gnu_member_under_qemu_reports_to_a_native_hub_and_root() {
    prove(&AARCH64).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn armv7_gnueabihf_member_under_qemu_reports_to_a_native_hub_and_root() {
    prove(&ARMV7).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aarch64_musl_static_member_under_qemu_reports_to_a_native_hub_and_root() {
    prove(&AARCH64_MUSL).await;
}

/// The update path on aarch64 (docs/updates.md): the emulated member downloads a release
/// from its hub's cache, checks its manifest and SHA-256, installs it into a slot byte for
/// byte, and switches to it: its restart `exec`s the packaged binary, which `exec`s the
/// release on trial, which passes its health gate and is applied.
///
/// An `exec` of an aarch64 binary needs binfmt for qemu. The member runs in its own user
/// and mount namespace with a private `binfmt_misc` (Linux 6.7 and later) where qemu is
/// registered ([`binfmt_launcher`]), so every binary it starts runs under qemu as on a Pi,
/// and the machine's own binfmt is left alone. Where the kernel or the sandbox does not
/// allow that namespace, the switch cannot happen: the test then proves the other half,
/// that the member goes back to its own binary by itself and reports the rollback with the
/// cause, and says so.
#[tokio::test(flavor = "multi_thread")]
async fn aarch64_member_under_qemu_downloads_checks_installs_and_switches_to_a_release() {
    let target = &AARCH64;
    let Some(bin) = std::env::var_os(target.env).filter(|v| !v.is_empty()) else {
        println!("SKIPPED: ${} is not set (`./dev test` sets it)", target.env);
        return;
    };
    let bin = PathBuf::from(bin);
    let binfmt = binfmt_launcher(target, &bin);
    if binfmt.is_none() {
        println!(
            "NOTE: no private binfmt_misc here (unshare --user --mount, Linux >= 6.7): the \
             switch is proven to roll back instead"
        );
    }
    let fleet = Fleet::new();
    let (release_key, release_public) = nexus_e2e::keygen(&fleet.path().join("keys"), "release");
    let with_key = |toml: String| {
        toml.replacen(
            "root_keys = [",
            &format!("release_keys = [\"{release_public}\"]\nroot_keys = ["),
            1,
        )
    };
    let beats =
        nexus_e2e::Seen::watch(&fleet.root_nats, "nexus._core.edge.health.edge-msk-01").await;
    let dir = fleet.path().to_path_buf();
    let root =
        nexus_e2e::AgentProcess::spawn(fleet::ROOT, &with_key(fleet.config(fleet::ROOT, "")), &dir);
    let _hub =
        nexus_e2e::AgentProcess::spawn(fleet::HUB, &with_key(fleet.config(fleet::HUB, "")), &dir);
    let launch = binfmt.clone().unwrap_or_else(|| Launch {
        program: Some(bin.clone()),
        launcher: launcher(target),
        env: Vec::new(),
    });
    let member = nexus_e2e::AgentProcess::spawn_with(
        &launch,
        fleet::MEMBER,
        &with_key(fleet.config(fleet::MEMBER, "[updates]\ngate = \"30s\"\n")),
        &dir,
    );
    let _logs = nexus_e2e::LogsOnPanic(vec![member.log_path().to_path_buf()]);
    nexus_e2e::wait_until(
        "the emulated member reports its target",
        STARTUP,
        async || {
            beats
                .last_payload()
                .is_some_and(|b| b["update"]["target"] == target.triple)
        },
    )
    .await;
    let root_config = root.config_path().to_str().expect("utf-8").to_owned();
    publish_release(&root_config, &release_key, &bin, target.triple, "0.9.0");
    start_rollout(&root_config, "0.9.0", fleet::MEMBER);
    let slot = fleet
        .data_dir(fleet::MEMBER)
        .join("bin")
        .join("nexus-agent-0.9.0");
    let published = std::fs::read(&bin).expect("the binary");
    nexus_e2e::wait_until(
        "the release installed in its slot, byte for byte",
        STARTUP,
        async || std::fs::read(&slot).is_ok_and(|installed| installed == published),
    )
    .await;
    let member_data = fleet.data_dir(fleet::MEMBER);
    let state = || update_state(&member_data);
    if binfmt.is_some() {
        // The same process (pid) execs the packaged binary, then the release.
        let applied = nexus_e2e::wait_until("the member applies 0.9.0", STARTUP, async || {
            let s = state();
            (s["last"]["result"] == "applied").then_some(s)
        })
        .await;
        assert_eq!(applied["active"]["version"], "0.9.0", "{applied}");
        assert!(member.is_running(), "the member runs on");
        let pid = member.pid().expect("a pid");
        let running = |file: &str| {
            std::fs::read(format!("/proc/{pid}/{file}"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default()
        };
        assert!(
            running("cmdline").contains(slot.to_str().expect("utf-8")),
            "the running process is the release: {}",
            running("cmdline")
        );
        assert!(
            running("environ").contains("NEXUS_AGENT_SLOT=0.9.0"),
            "it runs as the release on its slot"
        );
        nexus_e2e::wait_until(
            "the member's heartbeat reports the update applied",
            STARTUP,
            async || {
                beats.last_payload().is_some_and(|b| {
                    b["update"]["rollout"].is_u64()
                        && b["update"]["state"] == "idle"
                        && b["status"] == "healthy"
                })
            },
        )
        .await;
        return;
    }
    // Without binfmt the exec of the new binary fails, so the restart (as systemd would
    // make it) goes back to the member's own binary.
    nexus_e2e::wait_until("the member stops to switch", STARTUP, async || {
        !member.is_running()
    })
    .await;
    member.restart();
    let update =
        nexus_e2e::wait_until(
            "the member reports the rollback",
            STARTUP,
            async || match beats.last_payload() {
                Some(b) if b["update"]["state"] == "rolled_back" => Ok(b["update"].clone()),
                last => Err(format!(
                    "last heartbeat {:?}; update.json {}",
                    last.map(|b| (b["agent_version"].clone(), b["update"].clone())),
                    state()
                )),
            },
        )
        .await;
    assert_eq!(update["release"], "0.9.0");
    assert!(
        update["cause"]
            .as_str()
            .is_some_and(|c| c.contains("cannot start")),
        "{update}"
    );
}

/// qemu's binfmt rule for aarch64 ELF executables (magic and mask as qemu ships them).
const AARCH64_BINFMT: &str = r":qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:";

/// How to run `bin` so that it and every aarch64 binary it `exec`s run under qemu: in a
/// new user and mount namespace, a private `binfmt_misc` is mounted and qemu registered in
/// it (flag `F`: the interpreter is opened at registration), then the program is started
/// directly (`bin` with no launcher). The machine's own binfmt is not touched. `None` when
/// this kernel or sandbox does not allow it (checked by running `bin --version`).
fn binfmt_launcher(target: &ArmTarget, bin: &Path) -> Option<Launch> {
    let qemu = find_program(target.qemu)?;
    let rule = format!("{AARCH64_BINFMT}{}:F", qemu.display());
    let launcher: Vec<OsString> = [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        "set -e; mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; \
         printf '%s' \"$1\" > /proc/sys/fs/binfmt_misc/register; shift; exec \"$@\"",
        "sh",
    ]
    .into_iter()
    .map(OsString::from)
    .chain([OsString::from(rule)])
    .collect();
    // The glibc build finds its loader and libc through qemu's QEMU_LD_PREFIX.
    let env: Vec<(OsString, OsString)> = target
        .sysroot
        .map(|s| ("QEMU_LD_PREFIX".into(), s.into()))
        .into_iter()
        .collect();
    let probe = Command::new(&launcher[0])
        .args(&launcher[1..])
        .arg(bin)
        .arg("--version")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&probe.stdout);
    (probe.status.success() && version.contains(target.triple)).then(|| Launch {
        program: Some(bin.to_path_buf()),
        launcher,
        env,
    })
}

async fn prove(target: &ArmTarget) {
    let Some(bin) = std::env::var_os(target.env).filter(|v| !v.is_empty()) else {
        println!(
            "SKIPPED: ${} is not set, so there is no {} binary to run under qemu \
             (`./dev arm-proof` and `./dev test` build one and run this test)",
            target.env, target.triple
        );
        return;
    };
    let bin = PathBuf::from(bin);
    assert!(
        bin.is_file(),
        "${} = {} does not exist",
        target.env,
        bin.display()
    );
    let elf = Elf::read(&bin);
    assert_eq!(
        (elf.machine, elf.class64),
        (target.machine, target.elf64),
        "{} is not a {} executable (ELF machine {}, 64-bit {})",
        bin.display(),
        target.triple,
        elf.machine,
        elf.class64
    );
    assert_eq!(
        elf.interpreter,
        target.sysroot.is_some(),
        "{}: a dynamic loader is expected exactly for the glibc targets (musl is static)",
        bin.display()
    );
    let launcher = launcher(target);

    // --version names the target.
    let output = Command::new(&launcher[0])
        .args(&launcher[1..])
        .arg(&bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", launcher[0]));
    let version = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{} --version under {} failed ({}): {}{}",
        bin.display(),
        target.qemu,
        output.status,
        version,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        version.trim(),
        format!(
            "nexus-agent {} ({})",
            env!("CARGO_PKG_VERSION"),
            target.triple
        )
    );

    // A member under qemu joins a native hub and root; its heartbeats reach the root.
    let fleet = Fleet::new();
    let client = async_nats::connect(fleet.root_nats.url())
        .await
        .expect("connect to root nats");
    let mut heartbeats = client
        .subscribe(format!("nexus._core.edge.health.{}", fleet::MEMBER))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let _root = fleet.spawn(fleet::ROOT, "");
    let _hub = fleet.spawn(fleet::HUB, "");
    let member = fleet.spawn_with(
        fleet::MEMBER,
        "",
        &Launch {
            program: Some(bin.clone()),
            launcher,
            env: Vec::new(),
        },
    );
    let seen = collect_until(
        "two heartbeats of the emulated member at the root",
        &mut heartbeats,
        STARTUP,
        |seen| seen.len() >= 2,
    )
    .await;
    for message in &seen {
        let (event, envelope) = SignedEvent::open(
            message.subject.as_str(),
            message.headers.as_ref(),
            message.payload.clone(),
            MAX_ENVELOPE_BYTES,
        )
        .unwrap_or_else(|e| panic!("the emulated member's heartbeat does not verify: {e}"));
        assert_eq!(event.signer.to_string(), fleet.member_key.public);
        assert_eq!(envelope.source, fleet::MEMBER);
        let json = nexus_e2e::payload_json(message);
        assert_eq!(json["payload"]["mode"], "member");
        assert_eq!(json["payload"]["agent_version"], env!("CARGO_PKG_VERSION"));
    }
    assert!(
        member.log().contains("Starting nexus-agent."),
        "the heartbeats came from the emulated member; its log:\n{}",
        member.log()
    );

    // SIGTERM reaches the agent through qemu: a clean stop, as under systemd.
    let status = member
        .terminate(Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "the emulated member still runs 10 s after SIGTERM; log:\n{}",
                member.log()
            )
        });
    assert!(
        status.success(),
        "the emulated member exited with {status}; log:\n{}",
        member.log()
    );
    assert!(member.log().contains("Stopped."));
}

/// `[qemu, -L, sysroot]`: qemu-user runs the foreign binary, with Debian's cross libc as the
/// root for its dynamic loader (no binfmt_misc registration needed).
fn launcher(target: &ArmTarget) -> Vec<OsString> {
    let qemu = find_program(target.qemu).unwrap_or_else(|| {
        panic!(
            "{} not found: ./dev cross-setup installs it (apt-get install qemu-user-static)",
            target.qemu
        )
    });
    let mut launcher = vec![qemu.into_os_string()];
    if let Some(sysroot) = target.sysroot {
        assert!(
            Path::new(sysroot).join("lib").is_dir(),
            "{sysroot} is missing: ./dev cross-setup installs Debian's cross libc for {}",
            target.triple
        );
        launcher.push("-L".into());
        launcher.push(sysroot.into());
    }
    launcher
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// What the proof checks in an executable's ELF header.
struct Elf {
    class64: bool,
    machine: u16,
    /// Has a `PT_INTERP` program header (a dynamically linked executable).
    interpreter: bool,
}

impl Elf {
    fn read(path: &Path) -> Elf {
        let bytes =
            std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        assert!(
            bytes.len() > 64 && bytes.starts_with(b"\x7fELF") && bytes[5] == 1,
            "{} is not a little-endian ELF file",
            path.display()
        );
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let class64 = bytes[4] == 2;
        let machine = u16_at(18);
        let (phoff, phentsize, phnum) = if class64 {
            let phoff = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes"));
            (phoff as usize, u16_at(54) as usize, u16_at(56) as usize)
        } else {
            (
                u32_at(28) as usize,
                u16_at(42) as usize,
                u16_at(44) as usize,
            )
        };
        const PT_INTERP: u32 = 3;
        let interpreter = (0..phnum)
            .map(|i| phoff + i * phentsize)
            .filter(|&at| at + 4 <= bytes.len())
            .any(|at| u32_at(at) == PT_INTERP);
        Elf {
            class64,
            machine,
            interpreter,
        }
    }
}
