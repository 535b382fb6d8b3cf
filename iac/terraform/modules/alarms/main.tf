# Alarms on what should never happen quietly: a function failing or throttled, the gateway's
# calls running into its timeout, the table throttling or failing, a billing job dead-lettered.
# Every alarm notifies one SNS topic (and its optional email subscriber).

locals {
  alarm_actions = [aws_sns_topic.alarms.arn]

  # One Errors and one Throttles alarm per function.
  function_alarms = merge([
    for role, function_name in var.function_names : {
      "${role}-errors" = {
        function_name = function_name
        metric_name   = "Errors"
        description   = "The ${role} function failed (crash, timeout or out of memory), not an HTTP error answered by Ferry."
      }
      "${role}-throttles" = {
        function_name = function_name
        metric_name   = "Throttles"
        description   = "Lambda refused invocations of the ${role} function (concurrency limit)."
      }
    }
  ]...)

  # DynamoDB publishes ThrottledRequests and SystemErrors per (table, operation): the alarm adds
  # up the operations the functions use.
  table_alarms = {
    throttled-requests = {
      metric_name = "ThrottledRequests"
      description = "DynamoDB throttled requests on ${var.table_name}."
    }
    system-errors = {
      metric_name = "SystemErrors"
      description = "DynamoDB answered requests on ${var.table_name} with a server error."
    }
  }
}

resource "aws_sns_topic" "alarms" {
  name              = "${var.name}-alarms"
  kms_master_key_id = var.kms_key_arn
  tags              = var.tags
}

resource "aws_sns_topic_subscription" "email" {
  count     = var.alarm_email == null ? 0 : 1
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

resource "aws_cloudwatch_metric_alarm" "function" {
  for_each            = local.function_alarms
  alarm_name          = "${var.name}-${each.key}"
  alarm_description   = each.value.description
  namespace           = "AWS/Lambda"
  metric_name         = each.value.metric_name
  dimensions          = { FunctionName = each.value.function_name }
  statistic           = "Sum"
  period              = var.period_seconds
  evaluation_periods  = var.evaluation_periods
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.function_error_threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}

# Streams are long, so the gateway's p99 is compared with its timeout: calls that keep running
# into the limit are cut off (and charged only for what they delivered).
resource "aws_cloudwatch_metric_alarm" "gateway_duration" {
  alarm_name          = "${var.name}-gateway-duration-p99"
  alarm_description   = "The gateway's p99 duration is close to its timeout."
  namespace           = "AWS/Lambda"
  metric_name         = "Duration"
  dimensions          = { FunctionName = var.function_names["gateway"] }
  extended_statistic  = "p99"
  period              = var.period_seconds
  evaluation_periods  = var.evaluation_periods
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.gateway_duration_p99_threshold_ms
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "table" {
  for_each            = local.table_alarms
  alarm_name          = "${var.name}-table-${each.key}"
  alarm_description   = each.value.description
  evaluation_periods  = var.evaluation_periods
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions

  metric_query {
    id          = "total"
    label       = "${each.value.metric_name} (all operations)"
    expression  = "SUM(METRICS())"
    return_data = true
  }

  dynamic "metric_query" {
    for_each = var.dynamodb_operations
    content {
      id = "m${metric_query.key}"
      metric {
        namespace   = "AWS/DynamoDB"
        metric_name = each.value.metric_name
        dimensions = {
          TableName = var.table_name
          Operation = metric_query.value
        }
        stat   = "Sum"
        period = var.period_seconds
      }
    }
  }

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "dlq" {
  alarm_name          = "${var.name}-billing-dlq"
  alarm_description   = "A scheduled billing job could not be delivered and waits in ${var.dlq_name}."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = var.dlq_name }
  statistic           = "Maximum"
  period              = var.period_seconds
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}
