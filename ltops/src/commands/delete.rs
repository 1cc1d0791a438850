//! `ltops delete`: stops everything a cluster started and removes its state (results included).

use std::io::{BufRead, IsTerminal, Write};

use crate::commands::lock;
use crate::error::{Error, IoContext, Result};
use crate::provider::{self, DeleteOptions};
use crate::state::Home;

pub async fn delete(home: &Home, name: &str, yes: bool, opts: DeleteOptions) -> Result<i32> {
    let st = home.load(name)?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(Error::Usage(format!(
                "deleting cluster {name:?} removes its results too; pass --yes to confirm (stdin is not a terminal, so ltops cannot ask)"
            )));
        }
        eprint!(
            "Delete cluster {name:?}, stop everything it runs and remove {} (results included)? [y/N] ",
            home.cluster_dir(name).display()
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .context(|| "reading the answer".into())?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
            eprintln!("not deleted");
            return Ok(0);
        }
    }
    let _lock = lock(home, name)?;
    let mut st = home.load(name).unwrap_or(st);
    let save = |s: &crate::state::ClusterState| home.save(s);
    match provider::for_type(st.kind(), home) {
        Ok(p) => p.delete(&mut st, opts, &save).await?,
        Err(e) => {
            return Err(Error::Usage(format!(
                "{e}; this version cannot stop a {} cluster's resources. Remove {} by hand once they are gone.",
                st.kind().name(),
                home.cluster_dir(name).display()
            )))
        }
    }
    let dir = home.cluster_dir(name);
    std::fs::remove_dir_all(&dir).context(|| format!("removing {}", dir.display()))?;
    println!("deleted cluster {name:?}");
    Ok(0)
}
