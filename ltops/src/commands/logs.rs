//! `ltops logs`: a component's log, optionally followed.

use crate::commands::open;
use crate::error::Result;
use crate::state::{Home, Role};

pub async fn logs(
    home: &Home,
    cluster: &str,
    role: Role,
    index: u32,
    follow: bool,
    lines: Option<usize>,
) -> Result<i32> {
    let (st, p) = open(home, cluster)?;
    p.logs(&st, role, index, follow, lines).await?;
    Ok(0)
}
