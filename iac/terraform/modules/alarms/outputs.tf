output "topic_arn" {
  description = "ARN of the SNS topic every alarm notifies (subscribe pagers or chat here)."
  value       = aws_sns_topic.alarms.arn
}

output "alarm_arns" {
  description = "ARNs of every alarm, by name."
  value = merge(
    { for alarm in aws_cloudwatch_metric_alarm.function : alarm.alarm_name => alarm.arn },
    { for alarm in aws_cloudwatch_metric_alarm.table : alarm.alarm_name => alarm.arn },
    {
      (aws_cloudwatch_metric_alarm.gateway_duration.alarm_name) = aws_cloudwatch_metric_alarm.gateway_duration.arn
      (aws_cloudwatch_metric_alarm.dlq.alarm_name)              = aws_cloudwatch_metric_alarm.dlq.arn
    },
  )
}
