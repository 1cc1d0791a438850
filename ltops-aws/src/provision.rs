//! Creating (or resuming the creation of) one cluster, one phase per resource: VPC, subnet,
//! internet gateway, route table, security group, key pair, instances, then waiting until they
//! run. Each phase skips what [`Resources`] already records, creates with tags in the same call,
//! and records the new id before the next phase starts; its configuration (attributes, routes,
//! rules) is applied idempotently every time. A resume first adopts what carries the cluster's
//! id tag but was never recorded (a create cancelled between the API's answer and the record),
//! so stopping a create at any point, even mid-call, never leaks nor duplicates a resource.

use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    AttributeBooleanValue, BlockDeviceMapping, EbsBlockDevice, HttpTokensState,
    InstanceMetadataOptionsRequest, InstanceType, IpPermission, IpRange, ResourceType,
    UserIdGroupPair, VolumeType,
};

use crate::{Error, InstanceRecord, Plan, Record, Resources, Result, Session};

struct Provision<'a, 'r> {
    s: &'a Session,
    plan: &'a Plan,
    res: &'a mut Resources,
    record: &'a mut Record<'r>,
}

impl Session {
    /// Creates what `res` does not record yet, recording each id as soon as it exists.
    pub async fn provision(
        &self,
        plan: &Plan,
        res: &mut Resources,
        record: &mut Record<'_>,
    ) -> Result<()> {
        let mut p = Provision {
            s: self,
            plan,
            res,
            record,
        };
        p.adopt().await?;
        p.vpc().await?;
        p.subnet().await?;
        p.gateway().await?;
        p.routes().await?;
        p.security_group().await?;
        p.key_pair().await?;
        p.instances().await?;
        p.wait_running().await
    }
}

impl Provision<'_, '_> {
    fn save(&mut self, note: &str) -> Result<()> {
        (self.record)(self.res, note).map_err(Error::Record)
    }

    /// Records a resource just created.
    fn save_new(
        &mut self,
        field: impl Fn(&mut Resources) -> &mut Option<String>,
        kind: &str,
        id: String,
    ) -> Result<()> {
        let note = format!("created {kind} {id}");
        *field(self.res) = Some(id);
        self.save(&note)
    }

    /// Fills in, from tags, what exists but was never recorded.
    async fn adopt(&mut self) -> Result<()> {
        let sel = crate::Selector::ClusterId(self.plan.tags.cluster_id.clone());
        let c = &self.s.client;
        let before = self.res.clone();
        let what = "looking for the cluster's resources by tag";
        if self.res.vpc.is_none() {
            let out = c
                .describe_vpcs()
                .set_filters(Some(sel.filters()))
                .send()
                .await
                .map_err(|e| Error::api(what, e))?;
            self.res.vpc = out
                .vpcs()
                .first()
                .and_then(|v| v.vpc_id())
                .map(str::to_string);
        }
        if self.res.subnet.is_none() {
            let out = c
                .describe_subnets()
                .set_filters(Some(sel.filters()))
                .send()
                .await
                .map_err(|e| Error::api(what, e))?;
            self.res.subnet = out
                .subnets()
                .first()
                .and_then(|v| v.subnet_id())
                .map(str::to_string);
        }
        // A create cancelled between the API's answer and the record can
        // also leave a recorded gateway attached, or a recorded route table
        // associated, without the record saying so.
        if self.res.internet_gateway.is_none() || !self.res.gateway_attached {
            let out = c
                .describe_internet_gateways()
                .set_filters(Some(sel.filters()))
                .send()
                .await
                .map_err(|e| Error::api(what, e))?;
            let recorded = self.res.internet_gateway.clone();
            let found = out
                .internet_gateways()
                .iter()
                .find(|g| recorded.is_none() || g.internet_gateway_id() == recorded.as_deref());
            if let Some(g) = found {
                self.res.internet_gateway = g.internet_gateway_id().map(str::to_string);
                self.res.gateway_attached = g
                    .attachments()
                    .iter()
                    .any(|a| a.vpc_id() == self.res.vpc.as_deref());
            }
        }
        if self.res.route_table.is_none() || self.res.route_table_association.is_none() {
            let out = c
                .describe_route_tables()
                .set_filters(Some(sel.filters()))
                .send()
                .await
                .map_err(|e| Error::api(what, e))?;
            let recorded = self.res.route_table.clone();
            let found = out
                .route_tables()
                .iter()
                .find(|t| recorded.is_none() || t.route_table_id() == recorded.as_deref());
            if let Some(t) = found {
                self.res.route_table = t.route_table_id().map(str::to_string);
                self.res.route_table_association = t
                    .associations()
                    .iter()
                    .find(|a| a.subnet_id() == self.res.subnet.as_deref())
                    .and_then(|a| a.route_table_association_id())
                    .map(str::to_string);
            }
        }
        if self.res.security_group.is_none() {
            let out = c
                .describe_security_groups()
                .set_filters(Some(sel.filters()))
                .send()
                .await
                .map_err(|e| Error::api(what, e))?;
            self.res.security_group = out
                .security_groups()
                .first()
                .and_then(|g| g.group_id())
                .map(str::to_string);
        }
        if self.res.key_pair.is_none() {
            let out = c
                .describe_key_pairs()
                .set_filters(Some(sel.filters()))
                .send()
                .await
                .map_err(|e| Error::api(what, e))?;
            self.res.key_pair = out
                .key_pairs()
                .first()
                .and_then(|k| k.key_name())
                .map(str::to_string);
        }
        if *self.res != before {
            let note = format!(
                "adopted what carries the cluster's tag but was not recorded: {}",
                crate::describe_new(&before, self.res).join(", ")
            );
            self.save(&note)?;
        }
        Ok(())
    }

    async fn vpc(&mut self) -> Result<()> {
        if self.res.vpc.is_none() {
            let out = self
                .s
                .client
                .create_vpc()
                .cidr_block(&self.plan.vpc_cidr)
                .tag_specifications(self.plan.tags.spec(ResourceType::Vpc, "vpc"))
                .send()
                .await
                .map_err(|e| Error::api("creating the VPC", e))?;
            let id = out
                .vpc()
                .and_then(|v| v.vpc_id())
                .unwrap_or_default()
                .to_string();
            self.save_new(|r| &mut r.vpc, "VPC", id)?;
        }
        let id = self.res.vpc.clone().unwrap_or_default();
        for (hostnames, what) in [(false, "DNS support"), (true, "DNS hostnames")] {
            let on = AttributeBooleanValue::builder().value(true).build();
            let req = self.s.client.modify_vpc_attribute().vpc_id(&id);
            let req = if hostnames {
                req.enable_dns_hostnames(on)
            } else {
                req.enable_dns_support(on)
            };
            req.send()
                .await
                .map_err(|e| Error::api(&format!("enabling {what} in {id}"), e))?;
        }
        Ok(())
    }

    async fn subnet(&mut self) -> Result<()> {
        if self.res.subnet.is_none() {
            let vpc = self.res.vpc.clone().unwrap_or_default();
            let out = self
                .s
                .client
                .create_subnet()
                .vpc_id(&vpc)
                .cidr_block(&self.plan.subnet_cidr)
                .tag_specifications(self.plan.tags.spec(ResourceType::Subnet, "subnet"))
                .send()
                .await
                .map_err(|e| Error::api("creating the subnet", e))?;
            let id = out
                .subnet()
                .and_then(|s| s.subnet_id())
                .unwrap_or_default()
                .to_string();
            self.save_new(|r| &mut r.subnet, "subnet", id)?;
        }
        let id = self.res.subnet.clone().unwrap_or_default();
        self.s
            .client
            .modify_subnet_attribute()
            .subnet_id(&id)
            .map_public_ip_on_launch(AttributeBooleanValue::builder().value(true).build())
            .send()
            .await
            .map_err(|e| Error::api(&format!("giving {id} public addresses"), e))?;
        Ok(())
    }

    async fn gateway(&mut self) -> Result<()> {
        if self.res.internet_gateway.is_none() {
            let out = self
                .s
                .client
                .create_internet_gateway()
                .tag_specifications(
                    self.plan
                        .tags
                        .spec(ResourceType::InternetGateway, "gateway"),
                )
                .send()
                .await
                .map_err(|e| Error::api("creating the internet gateway", e))?;
            let id = out
                .internet_gateway()
                .and_then(|g| g.internet_gateway_id())
                .unwrap_or_default()
                .to_string();
            self.save_new(|r| &mut r.internet_gateway, "internet gateway", id)?;
        }
        if !self.res.gateway_attached {
            let igw = self.res.internet_gateway.clone().unwrap_or_default();
            self.s
                .client
                .attach_internet_gateway()
                .internet_gateway_id(&igw)
                .vpc_id(self.res.vpc.clone().unwrap_or_default())
                .send()
                .await
                .map_err(|e| Error::api(&format!("attaching {igw} to the VPC"), e))?;
            self.res.gateway_attached = true;
            self.save("")?;
        }
        Ok(())
    }

    async fn routes(&mut self) -> Result<()> {
        if self.res.route_table.is_none() {
            let out = self
                .s
                .client
                .create_route_table()
                .vpc_id(self.res.vpc.clone().unwrap_or_default())
                .tag_specifications(self.plan.tags.spec(ResourceType::RouteTable, "routes"))
                .send()
                .await
                .map_err(|e| Error::api("creating the route table", e))?;
            let id = out
                .route_table()
                .and_then(|r| r.route_table_id())
                .unwrap_or_default()
                .to_string();
            self.save_new(|r| &mut r.route_table, "route table", id)?;
        }
        let id = self.res.route_table.clone().unwrap_or_default();
        let route = self
            .s
            .client
            .create_route()
            .route_table_id(&id)
            .destination_cidr_block("0.0.0.0/0")
            .gateway_id(self.res.internet_gateway.clone().unwrap_or_default())
            .send()
            .await
            .map_err(|e| Error::api(&format!("adding the default route to {id}"), e));
        match route {
            Err(e) if e.code() == Some("RouteAlreadyExists") => {}
            other => {
                other?;
            }
        }
        if self.res.route_table_association.is_none() {
            let rt = self.res.route_table.clone().unwrap_or_default();
            let out = self
                .s
                .client
                .associate_route_table()
                .route_table_id(&rt)
                .subnet_id(self.res.subnet.clone().unwrap_or_default())
                .send()
                .await
                .map_err(|e| Error::api(&format!("associating {rt} with the subnet"), e))?;
            self.res.route_table_association = out.association_id().map(str::to_string);
            self.save("")?;
        }
        Ok(())
    }

    async fn security_group(&mut self) -> Result<()> {
        let t = &self.plan.tags;
        if self.res.security_group.is_none() {
            let out = self
                .s
                .client
                .create_security_group()
                .group_name(format!("ltops-{}-{}", t.name, t.cluster_id))
                .description(format!(
                    "ltops cluster {} ({}): SSH from the operator, all else inside the cluster",
                    t.name, t.cluster_id
                ))
                .vpc_id(self.res.vpc.clone().unwrap_or_default())
                .tag_specifications(t.spec(ResourceType::SecurityGroup, "group"))
                .send()
                .await
                .map_err(|e| Error::api("creating the security group", e))?;
            let id = out.group_id().unwrap_or_default().to_string();
            self.save_new(|r| &mut r.security_group, "security group", id)?;
        }
        let id = self.res.security_group.clone().unwrap_or_default();
        let ssh = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(22)
            .to_port(22)
            .ip_ranges(
                IpRange::builder()
                    .cidr_ip(&self.plan.allow_ssh_from)
                    .description("SSH from the operator (--allow-ssh-from)")
                    .build(),
            )
            .build();
        let inside = IpPermission::builder()
            .ip_protocol("-1")
            .user_id_group_pairs(
                UserIdGroupPair::builder()
                    .group_id(&id)
                    .description("app, database, agent and metrics traffic inside the cluster")
                    .build(),
            )
            .build();
        let rules = self
            .s
            .client
            .authorize_security_group_ingress()
            .group_id(&id)
            .ip_permissions(ssh)
            .ip_permissions(inside)
            .send()
            .await
            .map_err(|e| Error::api(&format!("allowing SSH and in-cluster traffic in {id}"), e));
        match rules {
            // A resumed create: the rules are there already.
            Err(e) if e.code() == Some("InvalidPermission.Duplicate") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    async fn key_pair(&mut self) -> Result<()> {
        if self.res.key_pair.is_some() {
            return Ok(());
        }
        let t = &self.plan.tags;
        let name = format!("ltops-{}-{}", t.name, t.cluster_id);
        let out = self
            .s
            .client
            .import_key_pair()
            .key_name(&name)
            .public_key_material(Blob::new(self.plan.public_key.as_bytes()))
            .tag_specifications(t.spec(ResourceType::KeyPair, "key"))
            .send()
            .await
            .map_err(|e| Error::api("importing the cluster's public key", e))?;
        let id = out.key_name().unwrap_or(&name).to_string();
        self.save_new(|r| &mut r.key_pair, "key pair", id)
    }

    async fn instances(&mut self) -> Result<()> {
        use base64::Engine as _;
        // A launch whose answer was lost (ctrl-c, a network error) is found by its tags.
        let existing = self
            .s
            .instances(&crate::Selector::ClusterId(
                self.plan.tags.cluster_id.clone(),
            ))
            .await?;
        for spec in &self.plan.instances {
            if self
                .res
                .instances
                .iter()
                .any(|r| r.role == spec.role && r.index == spec.index)
            {
                continue;
            }
            if let Some(i) = existing
                .iter()
                .find(|i| i.role == spec.role && i.index == spec.index && i.is_live())
            {
                self.res.instances.push(InstanceRecord {
                    role: spec.role.clone(),
                    index: spec.index,
                    id: i.id.clone(),
                });
                let note = format!(
                    "adopted instance {} ({}-{}): launched earlier, not recorded",
                    i.id, spec.role, spec.index
                );
                self.save(&note)?;
                continue;
            }
            let label = format!("{}-{}", spec.role, spec.index);
            let extra = [
                (crate::tag::ROLE, spec.role.clone()),
                (crate::tag::INDEX, spec.index.to_string()),
            ];
            let t = &self.plan.tags;
            let out = self
                .s
                .client
                .run_instances()
                .image_id(&self.plan.image.id)
                .instance_type(InstanceType::from(spec.instance_type.as_str()))
                .min_count(1)
                .max_count(1)
                .key_name(self.res.key_pair.clone().unwrap_or_default())
                .subnet_id(self.res.subnet.clone().unwrap_or_default())
                .security_group_ids(self.res.security_group.clone().unwrap_or_default())
                .user_data(base64::engine::general_purpose::STANDARD.encode(&spec.user_data))
                .client_token(format!("ltops-{}-{label}", t.cluster_id))
                .metadata_options(
                    InstanceMetadataOptionsRequest::builder()
                        .http_tokens(HttpTokensState::Required)
                        .build(),
                )
                .block_device_mappings(
                    BlockDeviceMapping::builder()
                        .device_name(&self.plan.image.root_device)
                        .ebs(
                            EbsBlockDevice::builder()
                                .volume_size(self.plan.root_volume_gib)
                                .volume_type(VolumeType::Gp3)
                                .encrypted(true)
                                .delete_on_termination(true)
                                .build(),
                        )
                        .build(),
                )
                .tag_specifications(t.spec_with(ResourceType::Instance, &label, &extra))
                .tag_specifications(t.spec_with(ResourceType::Volume, &label, &extra))
                .send()
                .await
                .map_err(|e| {
                    Error::api(&format!("launching {label} ({})", spec.instance_type), e)
                })?;
            let id = out
                .instances()
                .first()
                .and_then(|i| i.instance_id())
                .unwrap_or_default()
                .to_string();
            let note = format!("created instance {id} ({label})");
            self.res.instances.push(InstanceRecord {
                role: spec.role.clone(),
                index: spec.index,
                id,
            });
            self.save(&note)?;
        }
        Ok(())
    }

    async fn wait_running(&mut self) -> Result<()> {
        let ids: Vec<String> = self.res.instances.iter().map(|i| i.id.clone()).collect();
        if ids.is_empty() {
            return Ok(());
        }
        self.s
            .client
            .wait_until_instance_running()
            .set_instance_ids(Some(ids))
            .wait(self.plan.wait)
            .await
            .map_err(|e| {
                Error::Timeout(format!(
                    "waiting for the instances to run (up to {:?}): {}; run the same create again to keep waiting",
                    self.plan.wait,
                    aws_sdk_ec2::error::DisplayErrorContext(&e)
                ))
            })?;
        Ok(())
    }
}
