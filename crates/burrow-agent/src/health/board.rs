//! The board: a Raspberry Pi's power and throttling flags, the SoC temperature, free disk and
//! the time since boot; each left out where it cannot be read.

use std::path::Path;

/// Where recent Raspberry Pi kernels show the firmware's `get_throttled` value.
const THROTTLED_SYSFS: &str = "/sys/devices/platform/soc/soc:firmware/get_throttled";
/// The board model (Device Tree), to tell a Pi before asking `vcgencmd`.
const MODEL: &str = "/proc/device-tree/model";
/// The SoC's thermal zone, in millidegrees Celsius.
const THERMAL: &str = "/sys/class/thermal/thermal_zone0/temp";

/// A Raspberry Pi's `get_throttled` flags, from sysfs or else `vcgencmd` (on a Pi only).
pub(crate) async fn throttled() -> Option<u32> {
    if let Ok(text) = tokio::fs::read_to_string(THROTTLED_SYSFS).await {
        return burrow_proto::health::parse_throttled(&text);
    }
    let model = tokio::fs::read_to_string(MODEL).await.ok()?;
    if !model.starts_with("Raspberry Pi") {
        return None;
    }
    let run = tokio::process::Command::new("vcgencmd")
        .arg("get_throttled")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(5), run)
        .await
        .ok()?
        .ok()?;
    out.status
        .success()
        .then(|| burrow_proto::health::parse_throttled(&String::from_utf8_lossy(&out.stdout)))
        .flatten()
}

/// The SoC temperature in °C.
pub(crate) async fn temperature() -> Option<f32> {
    let text = tokio::fs::read_to_string(THERMAL).await.ok()?;
    let milli: f32 = text.trim().parse().ok()?;
    Some(milli / 1000.0)
}

/// Free and total bytes of the file system at `path`.
pub(crate) fn disk(path: &Path) -> Option<(u64, u64)> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some((
        s.f_bavail.saturating_mul(s.f_frsize),
        s.f_blocks.saturating_mul(s.f_frsize),
    ))
}

/// Seconds since boot.
pub(crate) async fn uptime() -> Option<u64> {
    let text = tokio::fs::read_to_string("/proc/uptime").await.ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(secs as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn this_machine_gives_its_disk_and_uptime() {
        let (free, total) = disk(Path::new("/")).expect("statvfs /");
        assert!(total > 0 && free <= total);
        assert!(uptime().await.is_some_and(|u| u > 0));
    }
}
