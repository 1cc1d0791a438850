//! Deleting one cluster: every resource recorded in its state *and* every resource carrying its
//! tags (so a lost or stale state file still cleans up), in dependency order: instances (waited
//! until terminated), key pair, security group, route table, internet gateway, subnet, VPC.
//! Already-gone resources count as deleted, so a repeated delete is harmless; a resource another
//! one still depends on is retried for a bounded time. [`Session::leaks`] then reads every
//! resource type back (not the tag list, which can outlive deleted resources) and names what is
//! left.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_ec2::client::Waiters;

use crate::{Error, Record, Resources, Result, Selector, Session};

/// A resource that still exists after a delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leak {
    /// `instance`, `vpc`, `subnet`, `internet-gateway`, `route-table`, `security-group`,
    /// `key-pair`, `volume`.
    pub kind: &'static str,
    pub id: String,
    /// State or detail (an instance's state, a volume's state).
    pub detail: String,
}

impl std::fmt::Display for Leak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{} {}", self.kind, self.id)
        } else {
            write!(f, "{} {} ({})", self.kind, self.id, self.detail)
        }
    }
}

/// How a teardown went: what it removed (for the operator) and what failed.
#[derive(Debug, Default)]
pub struct TeardownReport {
    pub removed: Vec<String>,
    pub errors: Vec<String>,
}

struct Teardown<'a, 'r> {
    s: &'a Session,
    sel: &'a Selector,
    res: &'a mut Resources,
    record: &'a mut Record<'r>,
    wait: Duration,
    report: TeardownReport,
}

fn union(recorded: Option<&String>, found: Vec<String>) -> Vec<String> {
    let mut v: Vec<String> = recorded.cloned().into_iter().collect();
    for f in found {
        if !v.contains(&f) {
            v.push(f);
        }
    }
    v
}

impl Session {
    /// Deletes what `res` records and what carries the selector's tags; `res` is emptied as
    /// things go (and recorded). `wait` bounds each wait (instances terminating, dependencies).
    pub async fn teardown(
        &self,
        sel: &Selector,
        res: &mut Resources,
        record: &mut Record<'_>,
        wait: Duration,
    ) -> TeardownReport {
        let mut t = Teardown {
            s: self,
            sel,
            res,
            record,
            wait,
            report: TeardownReport::default(),
        };
        // Each phase reports its own failure and the next still runs: what can go, goes.
        if let Err(e) = t.instances().await {
            t.report.errors.push(e.to_string());
        }
        for phase in 0..6 {
            let r = match phase {
                0 => t.key_pairs().await,
                1 => t.security_groups().await,
                2 => t.route_tables().await,
                3 => t.gateways().await,
                4 => t.subnets().await,
                _ => t.vpcs().await,
            };
            if let Err(e) = r {
                t.report.errors.push(e.to_string());
            }
        }
        t.report
    }

    /// Everything still carrying the selector's tags, read from each resource type.
    pub async fn leaks(&self, sel: &Selector) -> Result<Vec<Leak>> {
        let mut out = Vec::new();
        for i in self.instances(sel).await? {
            if i.state != "terminated" {
                out.push(Leak {
                    kind: "instance",
                    id: i.id,
                    detail: i.state,
                });
            }
        }
        let c = &self.client;
        let f = || Some(sel.filters());
        let what = "checking for resources left behind";
        for v in c
            .describe_vpcs()
            .set_filters(f())
            .send()
            .await
            .map_err(|e| Error::api(what, e))?
            .vpcs()
        {
            out.push(leak("vpc", v.vpc_id(), ""));
        }
        for s in c
            .describe_subnets()
            .set_filters(f())
            .send()
            .await
            .map_err(|e| Error::api(what, e))?
            .subnets()
        {
            out.push(leak("subnet", s.subnet_id(), ""));
        }
        for g in c
            .describe_internet_gateways()
            .set_filters(f())
            .send()
            .await
            .map_err(|e| Error::api(what, e))?
            .internet_gateways()
        {
            out.push(leak("internet-gateway", g.internet_gateway_id(), ""));
        }
        for r in c
            .describe_route_tables()
            .set_filters(f())
            .send()
            .await
            .map_err(|e| Error::api(what, e))?
            .route_tables()
        {
            out.push(leak("route-table", r.route_table_id(), ""));
        }
        for g in c
            .describe_security_groups()
            .set_filters(f())
            .send()
            .await
            .map_err(|e| Error::api(what, e))?
            .security_groups()
        {
            out.push(leak("security-group", g.group_id(), ""));
        }
        for k in c
            .describe_key_pairs()
            .set_filters(f())
            .send()
            .await
            .map_err(|e| Error::api(what, e))?
            .key_pairs()
        {
            out.push(leak("key-pair", k.key_name(), ""));
        }
        for v in c
            .describe_volumes()
            .set_filters(f())
            .send()
            .await
            .map_err(|e| Error::api(what, e))?
            .volumes()
        {
            let state = v
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            if state != "deleted" {
                out.push(leak("volume", v.volume_id(), &state));
            }
        }
        Ok(out)
    }
}

fn leak(kind: &'static str, id: Option<&str>, detail: &str) -> Leak {
    Leak {
        kind,
        id: id.unwrap_or_default().to_string(),
        detail: detail.to_string(),
    }
}

impl Teardown<'_, '_> {
    fn save(&mut self) -> Result<()> {
        (self.record)(self.res, "").map_err(Error::Record)
    }

    fn done(&mut self, what: String) {
        self.report.removed.push(what);
    }

    /// Deletes each resource of `kind` with `del` (retried while in use) and notes it.
    async fn remove_each<F, Fut>(&mut self, kind: &str, ids: Vec<String>, del: F) -> Result<()>
    where
        F: Fn(aws_sdk_ec2::Client, String) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        for id in ids {
            let what = format!("deleting {kind} {id}");
            let c = self.s.client.clone();
            self.delete(&what, || del(c.clone(), id.clone())).await?;
            self.done(format!("{kind} {id}"));
        }
        Ok(())
    }

    /// Runs a delete; "not found" is success, "still in use" is retried until `wait` passes.
    async fn delete<F, Fut>(&self, what: &str, mut call: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let deadline = Instant::now() + self.wait;
        let mut pause = Duration::from_millis(500);
        loop {
            match call().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) if e.is_dependency() && Instant::now() < deadline => {
                    tracing::debug!("{what}: {e}; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
                Err(e) if e.is_dependency() => {
                    return Err(Error::Timeout(format!(
                        "{what}: still in use after {:?} ({e}); run the delete again",
                        self.wait
                    )))
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn instances(&mut self) -> Result<()> {
        let found = self.s.instances(self.sel).await?;
        let mut ids: Vec<String> = found
            .iter()
            .filter(|i| i.state != "terminated")
            .map(|i| i.id.clone())
            .collect();
        for r in &self.res.instances {
            let known = found.iter().find(|i| i.id == r.id);
            if known.is_none_or(|i| i.state != "terminated") && !ids.contains(&r.id) {
                ids.push(r.id.clone());
            }
        }
        if !ids.is_empty() {
            let c = &self.s.client;
            match c
                .terminate_instances()
                .set_instance_ids(Some(ids.clone()))
                .send()
                .await
                .map_err(|e| Error::api("terminating the instances", e))
            {
                Ok(_) => {}
                // One stale id fails the whole call: terminate the ones EC2 still knows.
                Err(e) if e.is_not_found() => {
                    let live: Vec<String> = found
                        .iter()
                        .filter(|i| i.state != "terminated")
                        .map(|i| i.id.clone())
                        .collect();
                    if !live.is_empty() {
                        c.terminate_instances()
                            .set_instance_ids(Some(live.clone()))
                            .send()
                            .await
                            .map_err(|e| Error::api("terminating the instances", e))?;
                    }
                    ids = live;
                }
                Err(e) => return Err(e),
            }
            if !ids.is_empty() {
                c.wait_until_instance_terminated()
                    .set_instance_ids(Some(ids.clone()))
                    .wait(self.wait)
                    .await
                    .map_err(|e| {
                        Error::Timeout(format!(
                            "waiting for {} to terminate (up to {:?}): {}; run the delete again",
                            ids.join(", "),
                            self.wait,
                            aws_sdk_ec2::error::DisplayErrorContext(&e)
                        ))
                    })?;
            }
            for id in &ids {
                self.done(format!("instance {id}"));
            }
        }
        self.res.instances.clear();
        self.save()
    }

    async fn key_pairs(&mut self) -> Result<()> {
        let found = self
            .s
            .client
            .describe_key_pairs()
            .set_filters(Some(self.sel.filters()))
            .send()
            .await
            .map_err(|e| Error::api("looking for the cluster's key pairs", e))?;
        let names = union(
            self.res.key_pair.as_ref(),
            found
                .key_pairs()
                .iter()
                .filter_map(|k| k.key_name().map(str::to_string))
                .collect(),
        );
        self.remove_each("key pair", names, |c, id| async move {
            c.delete_key_pair()
                .key_name(&id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Error::api(&format!("deleting key pair {id}"), e))
        })
        .await?;
        self.res.key_pair = None;
        self.save()
    }

    async fn security_groups(&mut self) -> Result<()> {
        let found = self
            .s
            .client
            .describe_security_groups()
            .set_filters(Some(self.sel.filters()))
            .send()
            .await
            .map_err(|e| Error::api("looking for the cluster's security groups", e))?;
        let ids = union(
            self.res.security_group.as_ref(),
            found
                .security_groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_string))
                .collect(),
        );
        self.remove_each("security group", ids, |c, id| async move {
            c.delete_security_group()
                .group_id(&id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Error::api(&format!("deleting security group {id}"), e))
        })
        .await?;
        self.res.security_group = None;
        self.save()
    }

    async fn route_tables(&mut self) -> Result<()> {
        let c = &self.s.client;
        let found = c
            .describe_route_tables()
            .set_filters(Some(self.sel.filters()))
            .send()
            .await
            .map_err(|e| Error::api("looking for the cluster's route tables", e))?;
        let ids = union(
            self.res.route_table.as_ref(),
            found
                .route_tables()
                .iter()
                .filter_map(|r| r.route_table_id().map(str::to_string))
                .collect(),
        );
        for id in ids {
            // Associations first (recorded or not): a table in use cannot be deleted.
            let tables = match c.describe_route_tables().route_table_ids(&id).send().await {
                Ok(t) => t,
                Err(e) => {
                    let e = Error::api(&format!("describing route table {id}"), e);
                    if e.is_not_found() {
                        continue;
                    }
                    return Err(e);
                }
            };
            for a in tables.route_tables().iter().flat_map(|t| t.associations()) {
                if a.main() == Some(true) {
                    continue;
                }
                if let Some(aid) = a.route_table_association_id() {
                    let what = format!("detaching route table {id} from its subnet");
                    self.delete(&what, || async {
                        c.disassociate_route_table()
                            .association_id(aid)
                            .send()
                            .await
                            .map(|_| ())
                            .map_err(|e| Error::api(&what, e))
                    })
                    .await?;
                }
            }
            let what = format!("deleting route table {id}");
            self.delete(&what, || async {
                c.delete_route_table()
                    .route_table_id(&id)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::api(&what, e))
            })
            .await?;
            self.done(format!("route table {id}"));
        }
        self.res.route_table_association = None;
        self.res.route_table = None;
        self.save()
    }

    async fn gateways(&mut self) -> Result<()> {
        let c = &self.s.client;
        let found = c
            .describe_internet_gateways()
            .set_filters(Some(self.sel.filters()))
            .send()
            .await
            .map_err(|e| Error::api("looking for the cluster's internet gateways", e))?;
        let ids = union(
            self.res.internet_gateway.as_ref(),
            found
                .internet_gateways()
                .iter()
                .filter_map(|g| g.internet_gateway_id().map(str::to_string))
                .collect(),
        );
        for id in ids {
            let described = match c
                .describe_internet_gateways()
                .internet_gateway_ids(&id)
                .send()
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    let e = Error::api(&format!("describing internet gateway {id}"), e);
                    if e.is_not_found() {
                        continue;
                    }
                    return Err(e);
                }
            };
            let vpcs: Vec<String> = described
                .internet_gateways()
                .iter()
                .flat_map(|g| g.attachments())
                .filter_map(|a| a.vpc_id().map(str::to_string))
                .collect();
            for vpc in vpcs {
                let what = format!("detaching internet gateway {id} from {vpc}");
                self.delete(&what, || async {
                    c.detach_internet_gateway()
                        .internet_gateway_id(&id)
                        .vpc_id(&vpc)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| Error::api(&what, e))
                })
                .await?;
            }
            let what = format!("deleting internet gateway {id}");
            self.delete(&what, || async {
                c.delete_internet_gateway()
                    .internet_gateway_id(&id)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::api(&what, e))
            })
            .await?;
            self.done(format!("internet gateway {id}"));
        }
        self.res.gateway_attached = false;
        self.res.internet_gateway = None;
        self.save()
    }

    async fn subnets(&mut self) -> Result<()> {
        let c = &self.s.client;
        let found = c
            .describe_subnets()
            .set_filters(Some(self.sel.filters()))
            .send()
            .await
            .map_err(|e| Error::api("looking for the cluster's subnets", e))?;
        let ids = union(
            self.res.subnet.as_ref(),
            found
                .subnets()
                .iter()
                .filter_map(|s| s.subnet_id().map(str::to_string))
                .collect(),
        );
        self.remove_each("subnet", ids, |c, id| async move {
            c.delete_subnet()
                .subnet_id(&id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Error::api(&format!("deleting subnet {id}"), e))
        })
        .await?;
        self.res.subnet = None;
        self.save()
    }

    async fn vpcs(&mut self) -> Result<()> {
        let c = &self.s.client;
        let found = c
            .describe_vpcs()
            .set_filters(Some(self.sel.filters()))
            .send()
            .await
            .map_err(|e| Error::api("looking for the cluster's VPCs", e))?;
        let ids = union(
            self.res.vpc.as_ref(),
            found
                .vpcs()
                .iter()
                .filter_map(|v| v.vpc_id().map(str::to_string))
                .collect(),
        );
        self.remove_each("VPC", ids, |c, id| async move {
            c.delete_vpc()
                .vpc_id(&id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Error::api(&format!("deleting VPC {id}"), e))
        })
        .await?;
        self.res.vpc = None;
        self.save()
    }
}
