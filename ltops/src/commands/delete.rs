//! `ltops delete`: stops everything a cluster started and removes its state. Its results are
//! the user's data and stay (`Home::results_dir`) unless `--purge-results` is given.

use std::io::{BufRead, IsTerminal, Write};

use crate::commands::lock;
use crate::error::{Error, IoContext, Result};
use crate::provider::aws::AwsOptions;
use crate::provider::{self, CreateRequest, DeleteOptions};
use crate::state::{ClusterType, Home};

/// A cluster whose state is gone: `delete NAME --type aws --region R` finds it by its tags.
#[derive(Clone, Debug)]
pub struct Lost {
    pub kind: ClusterType,
    pub aws: AwsOptions,
}

/// What `ltops delete` was asked.
#[derive(Clone, Debug, Default)]
pub struct DeleteRequest {
    pub name: String,
    /// Confirmed on the command line (`--yes`).
    pub yes: bool,
    pub opts: DeleteOptions,
    /// Remove the cluster's results too.
    pub purge_results: bool,
    /// `--type`: a cluster whose state is gone, found by its provider's tags.
    pub lost: Option<Lost>,
}

pub async fn delete(home: &Home, req: DeleteRequest) -> Result<i32> {
    let DeleteRequest {
        name,
        yes,
        opts,
        purge_results,
        lost,
    } = req;
    let name = name.as_str();
    crate::state::validate_name(name)?;
    let results = home.results_dir(name);
    if !home.exists(name) && lost.is_none() && purge_results && results.is_dir() {
        if !yes {
            return Err(Error::Usage(format!(
                "removing the results of {name:?} ({}) needs --yes",
                results.display()
            )));
        }
        std::fs::remove_dir_all(&results).context(|| format!("removing {}", results.display()))?;
        println!("removed the results of {name:?} ({})", results.display());
        return Ok(0);
    }
    if !home.exists(name) {
        if let Some(lost) = lost {
            return delete_lost(home, name, yes, lost).await;
        }
        return Err(Error::UnknownCluster {
            name: name.into(),
            home: home.root.clone(),
            hint: format!(
                "if it was an aws cluster whose state was lost, `ltops delete {name} --type aws --region REGION --yes` \
                 removes what carries its tags"
            ),
        });
    }
    let st = home.load(name)?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(Error::Usage(format!(
                "deleting cluster {name:?} stops everything it runs and removes its state{}; pass --yes to confirm (stdin is not a terminal, so ltops cannot ask)",
                if purge_results { " and its results" } else { "" }
            )));
        }
        eprint!(
            "Delete cluster {name:?}, stop everything it runs and remove {}{}? [y/N] ",
            home.cluster_dir(name).display(),
            if purge_results {
                format!(" and its results ({})", results.display())
            } else {
                String::new()
            }
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
    report_results(name, &results, purge_results)?;
    Ok(0)
}

/// Removes the results when asked, else says where they are kept.
fn report_results(name: &str, results: &std::path::Path, purge: bool) -> Result<()> {
    if !results.is_dir() {
        return Ok(());
    }
    if purge {
        std::fs::remove_dir_all(results).context(|| format!("removing {}", results.display()))?;
        println!("removed its results ({})", results.display());
        return Ok(());
    }
    let runs = std::fs::read_dir(results)
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0);
    println!(
        "kept its results: {runs} run(s) in {} (`ltops delete {name} --purge-results --yes` removes them)",
        results.display()
    );
    Ok(())
}

/// Deletes what a cluster without a state left behind (found by its provider's tags).
async fn delete_lost(home: &Home, name: &str, yes: bool, lost: Lost) -> Result<i32> {
    if !yes {
        return Err(Error::Usage(format!(
            "cluster {name:?} has no state in {}; to delete whatever carries its tags, pass --yes",
            home.root.display()
        )));
    }
    let p = provider::for_type(lost.kind, home)?;
    let req = CreateRequest {
        name: name.into(),
        aws: lost.aws,
        ..Default::default()
    };
    let dir = home.cluster_dir(name);
    let _lock = if dir.exists() {
        Some(lock(home, name)?)
    } else {
        None
    };
    p.delete_lost(name, &req).await?;
    if dir.exists() {
        drop(_lock);
        std::fs::remove_dir_all(&dir).context(|| format!("removing {}", dir.display()))?;
    }
    println!("deleted what remained of cluster {name:?}");
    Ok(0)
}
