variable "name" {
  description = "Cluster name (letters, digits, - and _), as `ltops create --name`."
  type        = string
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,40}$", var.name))
    error_message = "The name must be 1-40 letters, digits, - or _."
  }
}

variable "cluster_id" {
  description = "Unique id tagged on every resource (ltops:cluster-id). Empty: derived from this directory and the name, so two checkouts never share one."
  type        = string
  default     = ""
  validation {
    condition     = can(regex("^[a-z0-9]{0,16}$", var.cluster_id))
    error_message = "The cluster id must be up to 16 lowercase letters or digits."
  }
}

variable "region" {
  description = "AWS region, as `ltops create --region`."
  type        = string
}

variable "app_count" {
  description = "Server instances, as `--app-count`."
  type        = number
  default     = 1
  validation {
    condition     = var.app_count >= 1 && var.app_count <= 16
    error_message = "Between 1 and 16 server instances."
  }
}

variable "agents" {
  description = "Load-test agent instances, as `--agents`."
  type        = number
  default     = 1
  validation {
    condition     = var.agents >= 1 && var.agents <= 64
    error_message = "Between 1 and 64 agents."
  }
}

variable "database" {
  description = "`postgres`: a PostgreSQL instance (required for more than one server); `sqlite`: none."
  type        = string
  default     = "postgres"
  validation {
    condition     = contains(["postgres", "sqlite"], var.database)
    error_message = "The database is postgres or sqlite."
  }
}

variable "proxy" {
  description = "`nginx` in front of the servers, `none`, or `auto` (nginx when app_count is above 1), as `--proxy`."
  type        = string
  default     = "auto"
  validation {
    condition     = contains(["auto", "nginx", "none"], var.proxy)
    error_message = "The proxy is auto, nginx or none."
  }
}

variable "app_type" {
  description = "Instance type of the servers, as `--app-type`."
  type        = string
  default     = "c6i.xlarge"
}

variable "agent_type" {
  description = "Instance type of the agents, as `--agent-type`."
  type        = string
  default     = "c6i.xlarge"
}

variable "db_type" {
  description = "Instance type of the PostgreSQL instance, as `--db-type`."
  type        = string
  default     = "m6i.large"
}

variable "proxy_type" {
  description = "Instance type of the nginx instance, as `--proxy-type`."
  type        = string
  default     = "c6i.large"
}

variable "metrics" {
  description = "A metrics instance running the cluster's Prometheus (`ltops deploy` configures it), as `--metrics`/`--no-metrics`."
  type        = bool
  default     = true
}

variable "metrics_type" {
  description = "Instance type of the metrics instance, as `--metrics-type`."
  type        = string
  default     = "m6i.large"
}

variable "ami" {
  description = "Machine image (x86_64 Debian or Ubuntu). Empty: the region's newest Debian 12 or later, else the newest Ubuntu server image."
  type        = string
  default     = ""
}

variable "ssh_user" {
  description = "Login user of the image. Empty: admin for Debian, ubuntu for Ubuntu."
  type        = string
  default     = ""
}

variable "allow_ssh_from" {
  description = "CIDR that may reach the instances' SSH port (your address/32). There is deliberately no default: 0.0.0.0/0 must be asked for."
  type        = string
  validation {
    condition     = can(cidrhost(var.allow_ssh_from, 0))
    error_message = "Give an IPv4 CIDR such as 203.0.113.7/32."
  }
}

variable "ssh_public_key" {
  description = "OpenSSH public key line to import as the instances' key pair (its private key stays with you)."
  type        = string
}

variable "ssh_private_key_file" {
  description = "Path of the matching private key, written into the ltops inventory output (identity_file). Empty: ssh's own choice."
  type        = string
  default     = ""
}

variable "vpc_cidr" {
  description = "Address range of the cluster's VPC."
  type        = string
  default     = "10.60.0.0/16"
}

variable "subnet_cidr" {
  description = "Address range of its one public subnet (inside vpc_cidr)."
  type        = string
  default     = "10.60.1.0/24"
}

variable "root_volume_gib" {
  description = "Size of each instance's encrypted gp3 root volume."
  type        = number
  default     = 20
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}
