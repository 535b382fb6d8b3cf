variable "name" {
  description = "Prefix of every name (rules are `<name>-<job>`, the queue `<name>-billing-dlq`)."
  type        = string

  validation {
    # 64 characters is EventBridge's rule name limit; the longest suffix is "-close-previous-month".
    condition     = can(regex("^[A-Za-z][A-Za-z0-9-]{0,42}$", var.name))
    error_message = "name must start with a letter and be at most 43 letters, digits and '-'."
  }
}

variable "function_name" {
  description = "Name of the billing function (the functions module's function_names[\"billing\"])."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,64}$", var.function_name))
    error_message = "function_name must be a Lambda function name (1-64 letters, digits, '-' and '_')."
  }
}

variable "function_arn" {
  description = "ARN of the billing function (the functions module's function_arns[\"billing\"])."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:lambda:[a-z0-9-]+:[0-9]{12}:function:[A-Za-z0-9_-]{1,64}$", var.function_arn))
    error_message = "function_arn must be an unqualified Lambda function ARN."
  }
}

variable "kms_key_arn" {
  description = "ARN of the KMS key that encrypts the dead-letter queue (its policy must let events.amazonaws.com use it, as the data module's does)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "expire_holds_schedule" {
  description = "When the `expire_holds` job runs (EventBridge schedule expression)."
  type        = string
  default     = "rate(5 minutes)"

  validation {
    condition     = can(regex("^(rate|cron)\\(.+\\)$", var.expire_holds_schedule))
    error_message = "expire_holds_schedule must be a rate(...) or cron(...) expression."
  }
}

variable "close_previous_month_schedule" {
  description = "When the `close_previous_month` job runs (UTC; daily by default, closing again is a no-op)."
  type        = string
  default     = "cron(10 0 * * ? *)"

  validation {
    condition     = can(regex("^(rate|cron)\\(.+\\)$", var.close_previous_month_schedule))
    error_message = "close_previous_month_schedule must be a rate(...) or cron(...) expression."
  }
}

variable "reconcile_schedule" {
  description = "When the `reconcile` job runs (UTC)."
  type        = string
  default     = "cron(30 0 * * ? *)"

  validation {
    condition     = can(regex("^(rate|cron)\\(.+\\)$", var.reconcile_schedule))
    error_message = "reconcile_schedule must be a rate(...) or cron(...) expression."
  }
}

variable "enabled" {
  description = "Whether the schedules run (false pauses every job without deleting anything)."
  type        = bool
  default     = true
}

variable "maximum_retry_attempts" {
  description = "Times EventBridge retries delivering a job to the function before dead-lettering it."
  type        = number
  default     = 8

  validation {
    condition     = var.maximum_retry_attempts >= 0 && var.maximum_retry_attempts <= 185
    error_message = "maximum_retry_attempts must be between 0 and 185."
  }
}

variable "maximum_event_age_seconds" {
  description = "How long EventBridge keeps retrying one job event, in seconds."
  type        = number
  default     = 3600

  validation {
    condition     = var.maximum_event_age_seconds >= 60 && var.maximum_event_age_seconds <= 86400
    error_message = "maximum_event_age_seconds must be between 60 and 86400."
  }
}

variable "dlq_retention_seconds" {
  description = "How long the dead-letter queue keeps a failed job event, in seconds."
  type        = number
  default     = 1209600

  validation {
    condition     = var.dlq_retention_seconds >= 60 && var.dlq_retention_seconds <= 1209600
    error_message = "dlq_retention_seconds must be between 60 and 1209600 (14 days)."
  }
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default     = {}
}
