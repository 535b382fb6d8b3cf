output "table_name" {
  description = "Name of the DynamoDB table."
  value       = aws_dynamodb_table.main.name
}

output "table_arn" {
  description = "ARN of the DynamoDB table (its indexes are `<arn>/index/*`)."
  value       = aws_dynamodb_table.main.arn
}

output "bucket_name" {
  description = "Name of the export bucket."
  value       = aws_s3_bucket.main.bucket
}

output "bucket_arn" {
  description = "ARN of the export bucket."
  value       = aws_s3_bucket.main.arn
}

output "kms_key_arn" {
  description = "ARN of the customer-managed KMS key (table, bucket, Lambda environment, logs, queues, topics)."
  value       = aws_kms_key.main.arn
}
