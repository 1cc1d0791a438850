# The topology `ltops create --type aws` builds, for teams that provision with Terraform: one VPC
# with a public subnet, an internet gateway and a route table, one security group (SSH from one
# CIDR, everything else only between the cluster's instances), an imported key pair and one
# instance per component, each tagged like ltops tags its own (ltops:cluster, ltops:cluster-id,
# ltops:role, ltops:index). `ltops create --type ssh --inventory-from-terraform DIR` reads the
# `ltops_inventory` output. Written for Terraform >= 1.0 and the AWS provider >= 3.39.

locals {
  cluster_id = var.cluster_id != "" ? var.cluster_id : substr(md5("${abspath(path.root)}/${var.name}"), 0, 8)
  proxy      = var.proxy == "nginx" || (var.proxy == "auto" && var.app_count > 1)

  found_images = concat(flatten(data.aws_ami_ids.debian[*].ids), flatten(data.aws_ami_ids.ubuntu[*].ids))
  ami          = var.ami != "" ? var.ami : local.found_images[0]
  debian       = var.ami == "" && length(flatten(data.aws_ami_ids.debian[*].ids)) > 0
  ssh_user     = var.ssh_user != "" ? var.ssh_user : (var.ami == "" && !local.debian ? "ubuntu" : "admin")

  nodes = merge(
    { for i in range(var.app_count) : "app-${i}" => { role = "app", index = i, type = var.app_type, init = "host.yaml" } },
    { for k, v in { "db-0" = { role = "db", index = 0, type = var.db_type, init = "db.yaml" } } : k => v if var.database == "postgres" },
    { for k, v in { "proxy-0" = { role = "proxy", index = 0, type = var.proxy_type, init = "proxy.yaml" } } : k => v if local.proxy },
    { for i in range(var.agents) : "agent-${i}" => { role = "agent", index = i, type = var.agent_type, init = "host.yaml" } },
    { for k, v in { "metrics-0" = { role = "metrics", index = 0, type = var.metrics_type, init = "metrics.yaml" } } : k => v if var.metrics },
  )
}

provider "aws" {
  region = var.region
  default_tags {
    tags = merge(var.tags, {
      "ltops:cluster"    = var.name
      "ltops:cluster-id" = local.cluster_id
      "ltops:managed-by" = "terraform"
    })
  }
}

data "aws_ami_ids" "debian" {
  count      = var.ami == "" ? 1 : 0
  owners     = ["136693071363"]
  name_regex = "^debian-(1[2-9]|[2-9][0-9])-amd64-"
  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
  filter {
    name   = "state"
    values = ["available"]
  }
}

data "aws_ami_ids" "ubuntu" {
  count  = var.ami == "" ? 1 : 0
  owners = ["099720109477"]
  filter {
    name   = "name"
    values = ["ubuntu/images/hvm-ssd*/ubuntu-*-amd64-server-*"]
  }
  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

resource "aws_vpc" "this" {
  # checkov:skip=CKV2_AWS_11:flow logs need a log group and an IAM role; a short-lived load-test network does not keep them
  # checkov:skip=CKV2_AWS_12:the default security group is unused; instances get the cluster's group only
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags = {
    Name = "ltops-${var.name}-vpc"
  }
}

resource "aws_subnet" "public" {
  # checkov:skip=CKV_AWS_130:the operator reaches the instances over SSH on their public addresses, as ltops does
  vpc_id                  = aws_vpc.this.id
  cidr_block              = var.subnet_cidr
  map_public_ip_on_launch = true
  tags = {
    Name = "ltops-${var.name}-subnet"
  }
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id
  tags = {
    Name = "ltops-${var.name}-gateway"
  }
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id
  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this.id
  }
  tags = {
    Name = "ltops-${var.name}-routes"
  }
}

resource "aws_route_table_association" "public" {
  subnet_id      = aws_subnet.public.id
  route_table_id = aws_route_table.public.id
}

resource "aws_security_group" "cluster" {
  # checkov:skip=CKV_AWS_382:instances install packages (PostgreSQL, nginx) from the distribution's mirrors at boot
  name        = "ltops-${var.name}-${local.cluster_id}"
  description = "ltops cluster ${var.name}: SSH from the operator, all else inside the cluster"
  vpc_id      = aws_vpc.this.id

  ingress {
    description = "SSH from the operator (allow_ssh_from)"
    from_port   = 22
    to_port     = 22
    protocol    = "tcp"
    cidr_blocks = [var.allow_ssh_from]
  }

  ingress {
    description = "app, database, agent and metrics traffic inside the cluster"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    self        = true
  }

  egress {
    description = "package mirrors and time sync"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }

  tags = {
    Name = "ltops-${var.name}-group"
  }
}

resource "aws_key_pair" "this" {
  key_name   = "ltops-${var.name}-${local.cluster_id}"
  public_key = var.ssh_public_key
  tags = {
    Name = "ltops-${var.name}-key"
  }
}

resource "aws_instance" "node" {
  # checkov:skip=CKV_AWS_88:the operator and ltops reach each instance over SSH on its public address; only SSH from allow_ssh_from is open
  # checkov:skip=CKV_AWS_126:detailed monitoring is billed per instance; the cluster's own Prometheus collects what a load test needs
  # checkov:skip=CKV2_AWS_41:the instances call no AWS API, so they get no IAM role
  for_each = local.nodes

  ami                    = local.ami
  instance_type          = each.value.type
  subnet_id              = aws_subnet.public.id
  vpc_security_group_ids = [aws_security_group.cluster.id]
  key_name               = aws_key_pair.this.key_name
  user_data              = file("${path.module}/cloud-init/${each.value.init}")
  ebs_optimized          = true

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }

  root_block_device {
    volume_size           = var.root_volume_gib
    volume_type           = "gp3"
    encrypted             = true
    delete_on_termination = true
  }

  tags = {
    Name          = "ltops-${var.name}-${each.key}"
    "ltops:role"  = each.value.role
    "ltops:index" = tostring(each.value.index)
  }
}
