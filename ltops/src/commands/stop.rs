//! `ltops stop`: stops a cluster's components and keeps everything else — its state, its
//! database, its results and (aws) its machines — so `ltops deploy` can start it again.

use crate::commands::{lock, open};
use crate::error::Result;
use crate::state::{ClusterState, Home};

pub async fn stop(home: &Home, name: &str) -> Result<i32> {
    crate::state::validate_name(name)?;
    let (_, p) = open(home, name)?;
    let _lock = lock(home, name)?;
    let mut st = home.load(name)?;
    let save = |s: &ClusterState| home.save(s);
    let notes = p.stop(&mut st, &save).await?;
    println!("stopped cluster {name:?}; its state, data and results are kept");
    for n in notes {
        println!("  {n}");
    }
    println!("`ltops deploy -c {name}` starts it again; `ltops delete {name}` removes it");
    Ok(0)
}
