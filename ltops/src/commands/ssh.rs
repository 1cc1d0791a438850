//! `ltops ssh`: a shell (or a command) in a component's environment, wherever it runs.

use crate::commands::open;
use crate::error::Result;
use crate::provider::ShellCommand;
use crate::state::{Home, Role};

pub async fn ssh(
    home: &Home,
    cluster: &str,
    role: Role,
    index: u32,
    cmd: Vec<String>,
) -> Result<i32> {
    let (st, p) = open(home, cluster)?;
    let cmd = if cmd.is_empty() {
        ShellCommand::Interactive
    } else {
        ShellCommand::Run(cmd)
    };
    p.shell(&st, role, index, &cmd).await
}
