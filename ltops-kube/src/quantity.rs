//! Kubernetes resource quantities (`"3920m"`, `"4"`, `"16318040Ki"`, `"8Gi"`, `"1e3"`) as
//! millicores and MiB, for comparing a cluster's requests with the nodes' allocatable resources.

/// CPU quantity in millicores; `None` when it is not a quantity.
pub fn cpu_millis(q: &str) -> Option<u64> {
    let q = q.trim();
    if let Some(m) = q.strip_suffix('m') {
        return m.parse::<u64>().ok();
    }
    let v: f64 = q.parse().ok()?;
    (v >= 0.0).then(|| (v * 1000.0).round() as u64)
}

/// Memory quantity in MiB (rounded down); `None` when it is not a quantity.
pub fn memory_mib(q: &str) -> Option<u64> {
    let q = q.trim();
    const UNITS: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (num, mult) = UNITS
        .iter()
        .find_map(|(u, m)| q.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or((q, 1.0));
    let v: f64 = num.parse().ok()?;
    (v >= 0.0).then(|| (v * mult / (1024.0 * 1024.0)).floor() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_as_kubernetes_writes_them() {
        assert_eq!(cpu_millis("3920m"), Some(3920));
        assert_eq!(cpu_millis("4"), Some(4000));
        assert_eq!(cpu_millis("0.5"), Some(500));
        assert_eq!(cpu_millis("x"), None);
        assert_eq!(memory_mib("16318040Ki"), Some(15935));
        assert_eq!(memory_mib("8Gi"), Some(8192));
        assert_eq!(memory_mib("1073741824"), Some(1024));
        assert_eq!(memory_mib("1G"), Some(953));
        assert_eq!(memory_mib("-1"), None);
    }
}
