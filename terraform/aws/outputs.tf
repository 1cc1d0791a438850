output "ltops_inventory" {
  description = "The hosts as an ltops ssh inventory: `ltops create --type ssh --inventory-from-terraform DIR`, or `terraform output -json ltops_inventory > hosts.json` and `--inventory hosts.json`."
  value = {
    defaults = {
      user          = local.ssh_user
      identity_file = var.ssh_private_key_file != "" ? var.ssh_private_key_file : null
    }
    host = [
      for k, n in local.nodes : {
        address         = aws_instance.node[k].public_ip
        private_address = aws_instance.node[k].private_ip
        roles           = [n.role]
      }
    ]
  }
}

output "cluster_id" {
  description = "The ltops:cluster-id tag on every resource."
  value       = local.cluster_id
}

output "instances" {
  description = "Instance id per component (app-0, db-0, proxy-0, agent-0, …, metrics-0)."
  value       = { for k, i in aws_instance.node : k => i.id }
}
