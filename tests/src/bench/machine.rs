//! What a benchmark ran on and with: the machine (CPU model, cores, RAM, OS, load), the
//! versions of the servers, the compiler and the agent, and the commit of the agent's source;
//! and the block of a markdown file a benchmark rewrites.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{agent_bin, mosquitto_bin, nats_server_bin};

/// The machine and the software of a run, each as text for a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// `model name` of /proc/cpuinfo.
    pub cpu: String,
    /// The cores this process may use.
    pub cores: usize,
    /// MemTotal, e.g. `23.4 GiB`.
    pub ram: String,
    /// PRETTY_NAME of /etc/os-release and the kernel release.
    pub os: String,
    /// /proc/loadavg's 1, 5 and 15 minute averages when the run started.
    pub load: String,
    /// `nats-server --version`.
    pub nats_server: String,
    /// The first line of `mosquitto -h`.
    pub mosquitto: String,
    /// `rustc --version`.
    pub rustc: String,
    /// `nexus-agent --version`, and the binary's path.
    pub agent: String,
    /// The commit of the repository (short hash and date), and whether the work tree
    /// differed from it.
    pub commit: String,
}

impl Setup {
    /// Looks everything up (runs each program once); `repo` is the repository's root.
    pub fn detect(repo: &Path) -> Self {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".to_owned(), |(_, v)| v.trim().to_owned());
        let ram = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or_else(
                || "unknown".to_owned(),
                |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0),
            );
        let pretty = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| "Linux".to_owned());
        let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
        let load = read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        let mosquitto = first_line(&output(Command::new(mosquitto_bin()).arg("-h")));
        let agent = agent_bin();
        let head = output(Command::new("git").arg("-C").arg(repo).args([
            "log",
            "-1",
            "--format=%h (%cs)",
        ]));
        let dirty = !output(Command::new("git").arg("-C").arg(repo).args([
            "status",
            "--porcelain",
            "--untracked-files=no",
        ]))
        .trim()
        .is_empty();
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ram,
            os: format!("{pretty}, Linux {kernel}"),
            load,
            nats_server: first_line(&output(Command::new(nats_server_bin()).arg("--version"))),
            mosquitto: mosquitto.trim_end_matches('.').to_owned(),
            rustc: first_line(&output(Command::new("rustc").arg("--version"))),
            agent: format!(
                "{} ({})",
                first_line(&output(Command::new(&agent).arg("--version"))),
                repo.canonicalize()
                    .ok()
                    .and_then(|repo| agent.strip_prefix(repo).ok().map(Path::to_path_buf))
                    .unwrap_or_else(|| agent.clone())
                    .display()
            ),
            commit: format!(
                "{}{}",
                first_line(&head),
                if dirty {
                    ", with uncommitted changes in the work tree"
                } else {
                    ""
                }
            ),
        }
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// stdout and stderr of a command, or the reason it did not run.
fn output(command: &mut Command) -> String {
    match command.stdin(Stdio::null()).output() {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("({:?} did not run: {e})", command.get_program()),
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown")
        .to_owned()
}

/// Replaces what lies between the lines `begin` and `end` of the file at `path` with
/// `block`, keeping both marker lines; fails if either marker is missing or out of order.
pub fn replace_block(path: &Path, begin: &str, end: &str, block: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let start = text
        .find(begin)
        .ok_or_else(|| format!("{} has no line `{begin}`", path.display()))?
        + begin.len();
    let stop = text[start..]
        .find(end)
        .ok_or_else(|| format!("{} has no line `{end}` after `{begin}`", path.display()))?
        + start;
    let updated = format!(
        "{}\n{}\n{}",
        &text[..start],
        block.trim_matches('\n'),
        &text[stop..]
    );
    std::fs::write(path, updated).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
