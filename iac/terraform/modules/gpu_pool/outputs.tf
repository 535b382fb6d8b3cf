output "pool_url" {
  description = "Base URL of the pool inside the VPC: register models with upstream `<pool_url>/<deployment_name>/v1`."
  value       = local.pool_url
}

output "deployment_upstream_url" {
  description = "The upstream URL of this pool's deployment (`<pool_url>/<deployment_name>/v1`)."
  value       = "${local.pool_url}/${var.deployment_name}/v1"
}

output "cluster_name" {
  description = "Name of the ECS cluster."
  value       = aws_ecs_cluster.pool.name
}

output "cluster_arn" {
  description = "ARN of the ECS cluster."
  value       = aws_ecs_cluster.pool.arn
}

output "capacity_provider_name" {
  description = "Name of the GPU capacity provider."
  value       = aws_ecs_capacity_provider.gpu.name
}

output "autoscaling_group_name" {
  description = "Name of the GPU Auto Scaling group."
  value       = aws_autoscaling_group.gpu.name
}

output "worker_task_definition_arn" {
  description = "ARN (with revision) of the worker task definition."
  value       = aws_ecs_task_definition.worker.arn
}

output "scaler_service_name" {
  description = "Name of the scaler's ECS service."
  value       = aws_ecs_service.scaler.name
}

output "scaler_config" {
  description = "The scaler's configuration (FERRY_SCALER_CONFIG_TOML) as rendered."
  value       = local.scaler_config
}

output "security_group_ids" {
  description = "Security groups of the pool by role (alb, scaler, worker, instance)."
  value = {
    alb      = aws_security_group.alb.id
    scaler   = aws_security_group.scaler.id
    worker   = aws_security_group.worker.id
    instance = aws_security_group.instance.id
  }
}
