//! What `kiroku doctor` found, and the judgments that need no IO: each
//! check's verdict from what the IO edge measured (free bytes, a clock
//! reading, the addresses of this host), rendered as a table or as JSON.

use serde::Serialize;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, but not as well as it could, or only in some setups.
    Warn,
    /// Will not work: the exit code is non-zero.
    Fail,
    /// Not checked (nothing to check, or an earlier failure prevents it).
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One check's result: what was checked, what was found, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(check, Status::Ok, detail, None::<String>)
    }

    pub fn skip(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(check, Status::Skip, detail, None::<String>)
    }

    pub fn warn(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(check, Status::Warn, detail, Some(fix))
    }

    pub fn fail(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(check, Status::Fail, detail, Some(fix))
    }

    fn new(
        check: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
        fix: Option<impl Into<String>>,
    ) -> Self {
        Self {
            check: check.into(),
            status,
            detail: detail.into(),
            fix: fix.map(Into::into),
        }
    }
}

/// Every finding, in the order checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn push(&mut self, f: Finding) {
        self.findings.push(f);
    }

    pub fn failed(&self) -> usize {
        self.count(Status::Fail)
    }

    fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }

    /// 0: nothing failed (warnings allowed); 1: something will not work.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.failed() > 0)
    }

    /// `{"ok": bool, "failed": n, "warnings": n, "findings": [...]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": self.failed() == 0,
            "failed": self.failed(),
            "warnings": self.count(Status::Warn),
            "findings": self.findings,
        })
    }

    /// One line per check (`[ ok ] check: detail`), each failure and
    /// warning followed by its fix, then a summary line.
    pub fn render_text(&self) -> String {
        let width = self
            .findings
            .iter()
            .map(|f| f.check.len())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&format!(
                "[{:^4}] {:<width$}  {}\n",
                f.status.label(),
                f.check,
                f.detail
            ));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("       {:<width$}  fix: {fix}\n", ""));
            }
        }
        out.push_str(&format!(
            "{} checks: {} failed, {} warnings\n",
            self.findings.len(),
            self.failed(),
            self.count(Status::Warn)
        ));
        out
    }
}

const GIB: u64 = 1 << 30;

/// Free space under `data_dir`: the spool must fit, with room for
/// recordings and packing beside it.
pub fn free_space(available: u64, total: u64, spool_capacity: u64) -> Finding {
    const CHECK: &str = "data_dir free space";
    let detail = format!(
        "{:.1} GiB free of {:.1} GiB (spool capacity {:.1} GiB)",
        available as f64 / GIB as f64,
        total as f64 / GIB as f64,
        spool_capacity as f64 / GIB as f64
    );
    if available < spool_capacity {
        Finding::fail(
            CHECK,
            detail,
            "free space, move data_dir to a larger disk, or lower storage.spool_capacity_mb below the free space",
        )
    } else if available < spool_capacity.saturating_add(5 * GIB) || available < total / 10 {
        Finding::warn(
            CHECK,
            detail,
            "recordings and MP4 packing need room beyond the spool: keep at least 5 GiB and 10 % free",
        )
    } else {
        Finding::ok(CHECK, detail)
    }
}

/// The clock against the `Date` an HTTP server sent: TC3 signatures are
/// refused beyond 5 minutes of skew, and S3 signatures beyond 15.
pub fn clock_skew(source: &str, local_unix_s: i64, remote_unix_s: i64) -> Finding {
    let check = format!("clock vs {source}");
    let skew = local_unix_s.saturating_sub(remote_unix_s);
    let detail = format!("this box is {skew:+} s from the server's Date header");
    // Date headers have one-second resolution, and the request took time.
    match skew.unsigned_abs() {
        0..=2 => Finding::ok(check, detail),
        3..=299 => Finding::warn(
            check,
            detail,
            "run time synchronisation (systemd-timesyncd or chrony): signatures carry time, and callbacks are timestamped",
        ),
        _ => Finding::fail(
            check,
            detail,
            "set the clock (chrony or systemd-timesyncd): Tencent's SDKs and S3 refuse signatures more than 5 (S3: 15) minutes off",
        ),
    }
}

/// The clock read as a date at all: before this code was written, it is
/// surely wrong.
pub fn clock_plausible(local_unix_s: i64) -> Finding {
    // 2026-01-01T00:00:00Z.
    const WRITTEN: i64 = 1_767_225_600;
    if local_unix_s < WRITTEN {
        Finding::fail(
            "clock",
            format!("the system clock reads {local_unix_s} s since 1970: before 2026"),
            "set the clock (chrony or systemd-timesyncd) before starting kiroku",
        )
    } else {
        Finding::ok("clock", "the system clock reads a plausible date")
    }
}

/// The addresses the ingest advertises to publishers, against the
/// addresses this host has.
pub fn advertised_addresses(
    advertised: &[std::net::IpAddr],
    local: &[std::net::IpAddr],
) -> Finding {
    const CHECK: &str = "ingest addresses";
    if advertised.is_empty() {
        return Finding::fail(
            CHECK,
            "no address is advertised to publishers",
            "set ingest.advertised_addresses to the address publishers reach this box at",
        );
    }
    let shown: Vec<String> = advertised.iter().map(ToString::to_string).collect();
    if advertised.iter().all(|a| a.is_loopback()) {
        return Finding::warn(
            CHECK,
            format!("only loopback is advertised ({})", shown.join(", ")),
            "publishers on other machines cannot connect: set ingest.advertised_addresses to this box's LAN or public address",
        );
    }
    let foreign: Vec<String> = advertised
        .iter()
        .filter(|a| !a.is_loopback() && !local.contains(a))
        .map(ToString::to_string)
        .collect();
    if foreign.is_empty() {
        Finding::ok(CHECK, format!("advertised: {}", shown.join(", ")))
    } else {
        Finding::warn(
            CHECK,
            format!(
                "{} not an address of this host (advertised: {})",
                foreign.join(", "),
                shown.join(", ")
            ),
            "fine behind 1:1 NAT (forward the UDP port to this box); otherwise advertise an address of this host",
        )
    }
}

/// The firewall hint for the UDP port publishers' media arrives on.
pub fn udp_firewall_hint(port: u16) -> String {
    format!(
        "allow UDP {port} in: `nft add rule inet filter input udp dport {port} accept` or `ufw allow {port}/udp`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn free_space_fails_below_the_spool_and_warns_near_it() {
        assert_eq!(free_space(GIB, 100 * GIB, 2 * GIB).status, Status::Fail);
        assert_eq!(free_space(6 * GIB, 100 * GIB, 2 * GIB).status, Status::Warn);
        assert_eq!(free_space(9 * GIB, 100 * GIB, 2 * GIB).status, Status::Warn);
        assert_eq!(free_space(50 * GIB, 100 * GIB, 2 * GIB).status, Status::Ok);
        assert!(free_space(50 * GIB, 100 * GIB, 2 * GIB)
            .detail
            .contains("50.0 GiB free of 100.0 GiB"));
    }

    #[test]
    fn clock_skew_bands() {
        assert_eq!(clock_skew("s3", 1000, 1001).status, Status::Ok);
        assert_eq!(clock_skew("s3", 1030, 1000).status, Status::Warn);
        assert_eq!(clock_skew("s3", 1000, 1400).status, Status::Fail);
        assert!(clock_skew("s3", 1000, 1400).detail.contains("-400 s"));
        assert_eq!(clock_skew("s3", i64::MIN, i64::MAX).status, Status::Fail);
        assert_eq!(clock_plausible(0).status, Status::Fail);
        assert_eq!(clock_plausible(1_800_000_000).status, Status::Ok);
    }

    #[test]
    fn advertised_addresses_are_judged_against_the_host() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let local = [ip("127.0.0.1"), ip("10.0.0.5")];
        assert_eq!(advertised_addresses(&[], &local).status, Status::Fail);
        assert_eq!(
            advertised_addresses(&[ip("127.0.0.1")], &local).status,
            Status::Warn
        );
        assert_eq!(
            advertised_addresses(&[ip("10.0.0.5")], &local).status,
            Status::Ok
        );
        let nat = advertised_addresses(&[ip("203.0.113.7")], &local);
        assert_eq!(nat.status, Status::Warn);
        assert!(nat.detail.contains("203.0.113.7"));
    }

    #[test]
    fn the_report_fails_on_any_failure_and_renders_fixes() {
        let mut r = Report::default();
        r.push(Finding::ok("config", "valid"));
        r.push(Finding::warn(
            "io_uring",
            "unavailable",
            "use a newer kernel",
        ));
        assert_eq!(r.exit_code(), 0);
        r.push(Finding::fail(
            "listen",
            "port 8080 in use",
            "pick another port",
        ));
        assert_eq!(r.exit_code(), 1);
        let text = r.render_text();
        assert!(text.contains("[FAIL] listen"), "{text}");
        assert!(text.contains("fix: pick another port"), "{text}");
        assert!(text.ends_with("3 checks: 1 failed, 1 warnings\n"), "{text}");
        let json = r.to_json();
        assert_eq!(json["ok"], false);
        assert_eq!(json["findings"][2]["status"], "fail");
        assert!(json["findings"][0].get("fix").is_none());
    }
}
