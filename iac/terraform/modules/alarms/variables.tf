variable "name" {
  description = "Prefix of every alarm's and the topic's name."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z][A-Za-z0-9-]{0,63}$", var.name))
    error_message = "name must start with a letter and be at most 64 letters, digits and '-'."
  }
}

variable "function_names" {
  description = "Function names by role, as the functions module outputs them (gateway, admin, billing)."
  type        = map(string)

  validation {
    condition     = contains(keys(var.function_names), "gateway")
    error_message = "function_names must include the gateway."
  }
}

variable "table_name" {
  description = "Name of the DynamoDB table."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]{3,255}$", var.table_name))
    error_message = "table_name must be 3-255 characters of letters, digits, '_', '-' and '.'."
  }
}

variable "dynamodb_operations" {
  description = "DynamoDB operations whose ThrottledRequests and SystemErrors are summed (the ones Ferry calls; at most 9)."
  type        = list(string)
  default     = ["GetItem", "Query", "PutItem", "UpdateItem", "DeleteItem", "Scan", "TransactWriteItems"]

  validation {
    condition     = length(var.dynamodb_operations) >= 1 && length(var.dynamodb_operations) <= 9
    error_message = "dynamodb_operations must hold 1 to 9 operations (an alarm takes at most 10 metrics and expressions)."
  }
}

variable "dlq_name" {
  description = "Name of the billing jobs' dead-letter queue (the billing_schedule module's dlq_name)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,80}$", var.dlq_name))
    error_message = "dlq_name must be an SQS queue name."
  }
}

variable "alarm_email" {
  description = "Email address subscribed to the alarm topic (it must confirm the subscription); null for none."
  type        = string
  default     = null

  validation {
    condition     = var.alarm_email == null || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alarm_email))
    error_message = "alarm_email must be an email address."
  }
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the alarm topic (its policy must let cloudwatch.amazonaws.com use it, as the data module's does)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "function_error_threshold" {
  description = "Errors (or Throttles) of one function in one period above which its alarm fires."
  type        = number
  default     = 0

  validation {
    condition     = var.function_error_threshold >= 0
    error_message = "function_error_threshold must be at least 0."
  }
}

variable "gateway_duration_p99_threshold_ms" {
  description = "Gateway p99 duration (ms) above which its alarm fires; keep it a little under the gateway's timeout."
  type        = number
  default     = 840000

  validation {
    condition     = var.gateway_duration_p99_threshold_ms > 0 && var.gateway_duration_p99_threshold_ms <= 900000
    error_message = "gateway_duration_p99_threshold_ms must be between 1 and 900000."
  }
}

variable "period_seconds" {
  description = "Period over which each metric is evaluated, in seconds."
  type        = number
  default     = 300

  validation {
    condition     = var.period_seconds >= 60 && var.period_seconds % 60 == 0
    error_message = "period_seconds must be a multiple of 60."
  }
}

variable "evaluation_periods" {
  description = "Consecutive breaching periods before an alarm fires."
  type        = number
  default     = 1

  validation {
    condition     = var.evaluation_periods >= 1 && floor(var.evaluation_periods) == var.evaluation_periods
    error_message = "evaluation_periods must be a whole number, at least 1."
  }
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default     = {}
}
