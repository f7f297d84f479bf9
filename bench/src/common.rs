//! Pieces shared by the capacity benchmarks (each bin includes this file).

use std::process::{Child, Command};

use anyhow::Context;

/// CPU seconds (user + system) a process has used, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the ")" of the command name: state is field 3; utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("odd /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).context("utime")?.parse()?;
    let stime: f64 = f.get(12).context("stime")?.parse()?;
    // USER_HZ is 100 on every Linux this runs on; /proc reports in it.
    Ok((utime + stime) / 100.0)
}

/// A child process that gets SIGTERM and is waited for when dropped.
pub struct Killer(pub Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

/// A tiny blocking HTTP/1.0 exchange on 127.0.0.1 (keeps the benches free
/// of a runtime); returns the response body.
pub fn http(port: u16, request: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(request.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// The sum of a metric over its label sets; `name` may carry labels
/// (`name{label="v"}`) to pick one.
pub fn metric(port: u16, name: &str) -> anyhow::Result<f64> {
    let body = http(port, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    Ok(body
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum())
}

/// A `kiroku serve` in a temporary data dir, on a free port, in open dev
/// mode; stopped and its directory removed when dropped.
pub struct BenchDaemon {
    proc: Option<Killer>,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl BenchDaemon {
    /// Starts `kiroku` with `extra_toml` appended to the base config and
    /// waits until it serves /metrics.
    pub fn start(kiroku: &std::path::Path, name: &str, extra_toml: &str) -> anyhow::Result<Self> {
        if !kiroku.exists() {
            anyhow::bail!(
                "{} does not exist: cargo build --release -p kiroku, or pass --kiroku",
                kiroku.display()
            );
        }
        let dir = std::env::temp_dir().join(format!("kiroku-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cfg = dir.join("kiroku.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = \"{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n[ingest]\nudp_listen = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n{extra_toml}",
                dir.join("data").display()
            ),
        )?;
        let proc = Killer(
            Command::new(kiroku)
                .args(["serve", "--config"])
                .arg(&cfg)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?,
        );
        let daemon = Self {
            proc: Some(proc),
            port,
            dir,
        };
        let t0 = std::time::Instant::now();
        while http(port, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
            if t0.elapsed() > std::time::Duration::from_secs(15) {
                anyhow::bail!("the daemon did not start");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(daemon)
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, |p| p.0.id())
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        // Stop the process before removing its files.
        drop(self.proc.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
