output "rule_arns" {
  description = "EventBridge rule ARNs by job (expire-holds, close-previous-month, reconcile)."
  value       = { for job, rule in aws_cloudwatch_event_rule.job : job => rule.arn }
}

output "dlq_name" {
  description = "Name of the dead-letter queue (for the alarms module)."
  value       = aws_sqs_queue.dlq.name
}

output "dlq_arn" {
  description = "ARN of the dead-letter queue."
  value       = aws_sqs_queue.dlq.arn
}

output "dlq_url" {
  description = "URL of the dead-letter queue (to inspect or redrive failed job events)."
  value       = aws_sqs_queue.dlq.id
}
