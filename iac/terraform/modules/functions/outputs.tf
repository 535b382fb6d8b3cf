output "gateway_url" {
  description = "HTTPS URL of the gateway (the OpenAI-compatible API is under `/v1`)."
  value       = aws_lambda_function_url.this["gateway"].function_url
}

output "admin_url" {
  description = "HTTPS URL of the admin function (the admin API is under `/admin/v1`)."
  value       = aws_lambda_function_url.this["admin"].function_url
}

output "function_names" {
  description = "Function names by role (gateway, admin, billing)."
  value       = { for key, function in aws_lambda_function.this : key => function.function_name }
}

output "function_arns" {
  description = "Function ARNs by role (gateway, admin, billing)."
  value       = { for key, function in aws_lambda_function.this : key => function.arn }
}

output "role_arns" {
  description = "Execution role ARNs by role (gateway, admin, billing)."
  value       = { for key, role in aws_iam_role.function : key => role.arn }
}
