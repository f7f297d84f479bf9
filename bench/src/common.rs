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
