# The billing function's scheduled jobs. EventBridge invokes the function (asynchronously) with a
# constant JSON event naming the job; the job names are a contract with the Rust binary.

locals {
  jobs = {
    # Releases holds whose call never settled (a crashed or timed-out invocation), as the
    # sweeper of `ferry serve` does.
    expire-holds = {
      schedule = var.expire_holds_schedule
      input    = jsonencode({ job = "expire_holds" })
    }
    # Closes the previous month (invoices, JSONL exports). Closing a closed month is a no-op, so
    # running daily is safe and catches the 1st of the month even after a missed run.
    close-previous-month = {
      schedule = var.close_previous_month_schedule
      input    = jsonencode({ job = "close_previous_month" })
    }
    # Checks the money invariants (balances against the ledger; usage, revenue and invoice
    # totals per tenant), as `ferry billing reconcile` does.
    reconcile = {
      schedule = var.reconcile_schedule
      input    = jsonencode({ job = "reconcile" })
    }
  }
}

resource "aws_cloudwatch_event_rule" "job" {
  for_each            = local.jobs
  name                = "${var.name}-${each.key}"
  description         = "Ferry billing job ${each.key}"
  schedule_expression = each.value.schedule
  state               = var.enabled ? "ENABLED" : "DISABLED"
  tags                = var.tags
}

resource "aws_cloudwatch_event_target" "job" {
  for_each  = local.jobs
  rule      = aws_cloudwatch_event_rule.job[each.key].name
  target_id = "billing"
  arn       = var.function_arn
  input     = each.value.input

  # EventBridge retries a delivery the function refused (throttled, unavailable), then parks
  # the event in the dead-letter queue, whose alarm tells the operator.
  retry_policy {
    maximum_retry_attempts       = var.maximum_retry_attempts
    maximum_event_age_in_seconds = var.maximum_event_age_seconds
  }

  dead_letter_config {
    arn = aws_sqs_queue.dlq.arn
  }
}

resource "aws_lambda_permission" "job" {
  for_each      = local.jobs
  statement_id  = "AllowEventBridge-${each.key}"
  action        = "lambda:InvokeFunction"
  function_name = var.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.job[each.key].arn
}

# ---- Dead-letter queue -------------------------------------------------------------------------

resource "aws_sqs_queue" "dlq" {
  name                              = "${var.name}-billing-dlq"
  message_retention_seconds         = var.dlq_retention_seconds
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = 300
  tags                              = var.tags
}

data "aws_iam_policy_document" "dlq" {
  statement {
    sid       = "EventBridgeDeadLetters"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dlq.arn]
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [for rule in aws_cloudwatch_event_rule.job : rule.arn]
    }
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sqs:*"]
    resources = [aws_sqs_queue.dlq.arn]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_sqs_queue_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  policy    = data.aws_iam_policy_document.dlq.json
}
