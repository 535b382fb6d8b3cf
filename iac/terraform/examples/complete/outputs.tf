output "gateway_url" {
  description = "The OpenAI-compatible API: point SDKs at `<gateway_url>v1`."
  value       = module.functions.gateway_url
}

output "admin_url" {
  description = "The admin API (`<admin_url>admin/v1/...`), called with the operator key."
  value       = module.functions.admin_url
}

output "pool_url" {
  description = "The GPU pool inside the VPC: register models with upstream `<pool_url>/<deployment>/v1`."
  value       = module.gpu_pool.pool_url
}
