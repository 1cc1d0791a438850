//! `ltops`'s EC2 provisioner: everything one load-test cluster needs on AWS, and nothing left
//! behind after a delete.
//!
//! This crate is the only one that links `aws-sdk-ec2` (a large crate): `ltops` sees plain
//! data ([`Plan`], [`Resources`], [`Instance`]) and this crate's [`Error`], so a change in
//! `ltops` never recompiles the SDK.
//!
//! One cluster is a VPC with one public subnet, an internet gateway and a route table, one
//! security group (SSH from one CIDR; everything else only between the cluster's own
//! instances), an imported key pair (the private key never leaves the operator's machine) and
//! the instances. Every resource is created with its tags in the same call
//! ([`Tags`]: the cluster's name, its unique id and the operator's home), and its id is handed
//! to a `record` callback as soon as the API returns it, so a create interrupted anywhere can be
//! resumed ([`Session::provision`] skips what exists) or cleaned up ([`Session::teardown`]
//! deletes by recorded id *and* by tag, in dependency order, and [`Session::leaks`] reads every
//! resource type back to list anything that survived).
//!
//! The SDK's standard configuration applies: `AWS_ENDPOINT_URL` (the tests point it at the
//! `moto` emulator), profiles, SSO, environment credentials.

mod error;
mod provision;
mod teardown;

use std::time::Duration;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use aws_sdk_ec2::Client;
use serde::{Deserialize, Serialize};

pub use error::{Error, Result};
pub use teardown::{Leak, TeardownReport};

/// Tag keys every resource carries.
pub mod tag {
    pub const CLUSTER: &str = "ltops:cluster";
    pub const CLUSTER_ID: &str = "ltops:cluster-id";
    pub const OWNER: &str = "ltops:owner";
    pub const ROLE: &str = "ltops:role";
    pub const INDEX: &str = "ltops:index";
    pub const MANAGED_BY: &str = "ltops:managed-by";
}

/// How to reach EC2.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// `None`: the SDK's chain (`AWS_REGION`, the profile's region).
    pub region: Option<String>,
    /// `None`: the SDK's chain (`AWS_PROFILE`, `default`).
    pub profile: Option<String>,
}

/// What identifies one cluster's resources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags {
    pub name: String,
    pub cluster_id: String,
    /// A digest of the operator's machine and state directory: clusters of the same name created
    /// from two homes never match each other's tags.
    pub owner: String,
}

impl Tags {
    fn list(&self, extra: &[(&str, String)], label: &str) -> Vec<Tag> {
        let mut v = vec![
            ("Name", format!("ltops-{}-{label}", self.name)),
            (tag::CLUSTER, self.name.clone()),
            (tag::CLUSTER_ID, self.cluster_id.clone()),
            (tag::OWNER, self.owner.clone()),
            (tag::MANAGED_BY, "ltops".to_string()),
        ];
        v.extend(extra.iter().map(|(k, val)| (*k, val.clone())));
        v.into_iter()
            .map(|(k, val)| Tag::builder().key(k).value(val).build())
            .collect()
    }

    pub(crate) fn spec(&self, kind: ResourceType, label: &str) -> TagSpecification {
        self.spec_with(kind, label, &[])
    }

    pub(crate) fn spec_with(
        &self,
        kind: ResourceType,
        label: &str,
        extra: &[(&str, String)],
    ) -> TagSpecification {
        TagSpecification::builder()
            .resource_type(kind)
            .set_tags(Some(self.list(extra, label)))
            .build()
    }
}

/// Which resources a teardown or a leak check looks for by tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// Exactly one cluster.
    ClusterId(String),
    /// Every cluster of this name created from this home (a lost state file).
    NameAndOwner { name: String, owner: String },
}

impl Selector {
    pub(crate) fn filters(&self) -> Vec<Filter> {
        let f = |k: &str, v: &str| {
            Filter::builder()
                .name(format!("tag:{k}"))
                .values(v.to_string())
                .build()
        };
        match self {
            Selector::ClusterId(id) => vec![f(tag::CLUSTER_ID, id)],
            Selector::NameAndOwner { name, owner } => {
                vec![f(tag::CLUSTER, name), f(tag::OWNER, owner)]
            }
        }
    }
}

/// One instance to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceSpec {
    /// `app`, `db`, `agent`, `proxy` (a tag; the provisioner does not interpret it).
    pub role: String,
    pub index: u32,
    pub instance_type: String,
    /// cloud-init user data (plain text; encoded here).
    pub user_data: String,
}

/// Everything one create makes.
#[derive(Clone, Debug)]
pub struct Plan {
    pub tags: Tags,
    pub vpc_cidr: String,
    pub subnet_cidr: String,
    /// Where SSH is allowed from (the only ingress from outside the cluster).
    pub allow_ssh_from: String,
    /// OpenSSH public key line to import.
    pub public_key: String,
    pub image: Image,
    pub root_volume_gib: i32,
    pub instances: Vec<InstanceSpec>,
    /// Bound on each waiter (instances running, terminated).
    pub wait: Duration,
}

/// A machine image and how to log in to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub id: String,
    pub name: String,
    /// The image's default login user (`admin` on Debian, `ubuntu` on Ubuntu).
    pub user: String,
    /// The root device, for the root volume's size and encryption.
    pub root_device: String,
}

/// The ids of what exists, recorded as each is created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    pub vpc: Option<String>,
    pub subnet: Option<String>,
    pub internet_gateway: Option<String>,
    /// The gateway is attached to the VPC.
    pub gateway_attached: bool,
    pub route_table: Option<String>,
    pub route_table_association: Option<String>,
    pub security_group: Option<String>,
    pub key_pair: Option<String>,
    pub instances: Vec<InstanceRecord>,
}

/// One launched instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub role: String,
    pub index: u32,
    pub id: String,
}

/// An instance as EC2 reports it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub role: String,
    pub index: u32,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down`, `terminated`.
    pub state: String,
    pub instance_type: String,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
}

impl Instance {
    /// Running or about to: it is (or will be) billed.
    pub fn is_live(&self) -> bool {
        !matches!(self.state.as_str(), "terminated" | "shutting-down")
    }
}

/// A connection to EC2 in one region.
pub struct Session {
    pub(crate) client: Client,
    region: String,
}

/// Persists the resources after each change, with a note for the operator (`created VPC
/// vpc-…`, `adopted …`; empty for bookkeeping); an error stops the create (nothing more is
/// created than could be recorded).
pub type Record<'a> =
    dyn FnMut(&Resources, &str) -> std::result::Result<(), String> + Send + Sync + 'a;

impl Session {
    /// Loads the standard AWS configuration with the given region and profile.
    pub async fn connect(opts: &ConnectOptions) -> Result<Session> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = &opts.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(p) = &opts.profile {
            loader = loader.profile_name(p);
        }
        let config = loader.load().await;
        let region = config.region().map(|r| r.to_string()).ok_or_else(|| {
            Error::Config(
                "no AWS region: pass --region (for example --region eu-west-1), or set AWS_REGION or a region in the profile"
                    .into(),
            )
        })?;
        if config.credentials_provider().is_none() {
            return Err(Error::Config(
                "no AWS credentials provider: configure a profile (`aws configure`, `aws sso login`) or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                    .into(),
            ));
        }
        Ok(Session {
            client: Client::new(&config),
            region,
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// The region's newest Debian (12 or later) image for x86_64, else the newest Ubuntu server
    /// image: looked up, never hard-coded.
    pub async fn default_image(&self) -> Result<Image> {
        const SOURCES: [(&str, &str, &str); 2] = [
            ("136693071363", "debian-*-amd64-*", "admin"),
            (
                "099720109477",
                "ubuntu/images/hvm-ssd*/ubuntu-*-amd64-server-*",
                "ubuntu",
            ),
        ];
        for (owner, pattern, user) in SOURCES {
            let out = self
                .client
                .describe_images()
                .owners(owner)
                .filters(filter("name", pattern))
                .filters(filter("architecture", "x86_64"))
                .filters(filter("state", "available"))
                .send()
                .await
                .map_err(|e| Error::api("looking up the region's Debian/Ubuntu images", e))?;
            let newest = out
                .images()
                .iter()
                .filter(|i| {
                    // Debian 12 or later only; Debian's names are debian-NN-amd64-DATE.
                    let name = i.name().unwrap_or_default();
                    user != "admin"
                        || name
                            .strip_prefix("debian-")
                            .and_then(|r| r.split('-').next())
                            .and_then(|v| v.parse::<u32>().ok())
                            .is_some_and(|v| v >= 12)
                })
                .max_by(|a, b| (a.creation_date(), a.name()).cmp(&(b.creation_date(), b.name())));
            if let Some(i) = newest {
                return Ok(Image {
                    id: i.image_id().unwrap_or_default().to_string(),
                    name: i.name().unwrap_or_default().to_string(),
                    user: user.to_string(),
                    root_device: i.root_device_name().unwrap_or("/dev/xvda").to_string(),
                });
            }
        }
        Err(Error::Config(format!(
            "no Debian or Ubuntu x86_64 image found in {}: pass --ami ami-… (an x86_64 Debian or Ubuntu image)",
            self.region
        )))
    }

    /// Describes one image given by id (`--ami`); the login user is guessed from its name.
    pub async fn image(&self, id: &str) -> Result<Image> {
        let out = self
            .client
            .describe_images()
            .image_ids(id)
            .send()
            .await
            .map_err(|e| {
                let e = Error::api(&format!("describing the image {id}"), e);
                if e.code().is_some_and(|c| c.starts_with("InvalidAMIID")) {
                    Error::Config(format!(
                        "--ami {id}: no such image in {} ({e}); pick an x86_64 Debian or Ubuntu image of this region",
                        self.region
                    ))
                } else {
                    e
                }
            })?;
        let i = out.images().first().ok_or_else(|| {
            Error::Config(format!(
                "--ami {id}: no such image in {}; pick an x86_64 Debian or Ubuntu image of this region",
                self.region
            ))
        })?;
        let name = i.name().unwrap_or_default().to_string();
        let user = if name.to_ascii_lowercase().contains("ubuntu") {
            "ubuntu"
        } else {
            "admin"
        };
        Ok(Image {
            id: id.to_string(),
            name,
            user: user.into(),
            root_device: i.root_device_name().unwrap_or("/dev/xvda").to_string(),
        })
    }

    /// The cluster's instances as EC2 reports them now (terminated ones included).
    pub async fn instances(&self, sel: &Selector) -> Result<Vec<Instance>> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .describe_instances()
            .set_filters(Some(sel.filters()))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Error::api("describing the cluster's instances", e))?;
            for r in page.reservations() {
                for i in r.instances() {
                    let tag = |k: &str| {
                        i.tags()
                            .iter()
                            .find(|t| t.key() == Some(k))
                            .and_then(|t| t.value())
                            .unwrap_or_default()
                            .to_string()
                    };
                    out.push(Instance {
                        id: i.instance_id().unwrap_or_default().to_string(),
                        role: tag(tag::ROLE),
                        index: tag(tag::INDEX).parse().unwrap_or(0),
                        state: i
                            .state()
                            .and_then(|s| s.name())
                            .map(|n| n.as_str().to_string())
                            .unwrap_or_else(|| "unknown".into()),
                        instance_type: i
                            .instance_type()
                            .map(|t| t.as_str().to_string())
                            .unwrap_or_default(),
                        public_ip: i.public_ip_address().map(str::to_string),
                        private_ip: i.private_ip_address().map(str::to_string),
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.role, a.index, &a.id).cmp(&(&b.role, b.index, &b.id)));
        Ok(out)
    }

    /// The ids of the clusters of this name created from this home (any that carry its tags).
    pub async fn cluster_ids(&self, name: &str, owner: &str) -> Result<Vec<String>> {
        let sel = Selector::NameAndOwner {
            name: name.into(),
            owner: owner.into(),
        };
        let mut ids: Vec<String> = Vec::new();
        let vpcs = self
            .client
            .describe_vpcs()
            .set_filters(Some(sel.filters()))
            .send()
            .await
            .map_err(|e| Error::api("looking for the cluster's VPCs by tag", e))?;
        let tagged = vpcs
            .vpcs()
            .iter()
            .flat_map(|v| v.tags())
            .chain(
                self.instances_raw_tags(&sel)
                    .await?
                    .iter()
                    .map(|t| t as &Tag)
                    .collect::<Vec<_>>(),
            )
            .filter(|t| t.key() == Some(tag::CLUSTER_ID))
            .filter_map(|t| t.value().map(str::to_string))
            .collect::<Vec<_>>();
        for id in tagged {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    async fn instances_raw_tags(&self, sel: &Selector) -> Result<Vec<Tag>> {
        let out = self
            .client
            .describe_instances()
            .set_filters(Some(sel.filters()))
            .send()
            .await
            .map_err(|e| Error::api("looking for the cluster's instances by tag", e))?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| {
                i.state()
                    .and_then(|s| s.name())
                    .is_some_and(|n| n.as_str() != "terminated")
            })
            .flat_map(|i| i.tags().iter().cloned())
            .collect())
    }
}

/// `kind id` of each resource `new` records and `old` did not.
pub(crate) fn describe_new(old: &Resources, new: &Resources) -> Vec<String> {
    let pairs = [
        ("VPC", &old.vpc, &new.vpc),
        ("subnet", &old.subnet, &new.subnet),
        (
            "internet gateway",
            &old.internet_gateway,
            &new.internet_gateway,
        ),
        ("route table", &old.route_table, &new.route_table),
        ("security group", &old.security_group, &new.security_group),
        ("key pair", &old.key_pair, &new.key_pair),
    ];
    let mut out: Vec<String> = pairs
        .iter()
        .filter(|(_, o, n)| o.is_none() && n.is_some())
        .map(|(k, _, n)| format!("{k} {}", n.as_deref().unwrap_or_default()))
        .collect();
    if !old.gateway_attached && new.gateway_attached {
        out.push("the gateway's attachment to the VPC".into());
    }
    if let (None, Some(a)) = (&old.route_table_association, &new.route_table_association) {
        out.push(format!("route table association {a}"));
    }
    out
}

pub(crate) fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}
