variable "table_name" {
  description = "Name of the DynamoDB table that holds all of Ferry's state (FERRY_DYNAMODB_TABLE)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]{3,255}$", var.table_name))
    error_message = "table_name must be 3-255 characters of letters, digits, '_', '-' and '.'."
  }
}

variable "bucket_name" {
  description = "Name of the S3 bucket for billing exports (FERRY_S3_BUCKET). Globally unique."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name)) && !can(regex("\\.\\.", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name: 3-63 lower-case letters, digits, '.' and '-', starting and ending with a letter or digit."
  }
}

variable "deletion_protection" {
  description = "Refuse to delete the DynamoDB table (it holds the ledger). Turn off only to tear down a test stack."
  type        = bool
  default     = true
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted export object version is kept before S3 expires it."
  type        = number
  default     = 90

  validation {
    condition     = var.noncurrent_version_days >= 1 && floor(var.noncurrent_version_days) == var.noncurrent_version_days
    error_message = "noncurrent_version_days must be a whole number of days, at least 1."
  }
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete the bucket with its objects. Keep false outside test stacks."
  type        = bool
  default     = false
}

variable "access_logs_bucket" {
  description = "Existing bucket that receives S3 server access logs for the export bucket; null for none."
  type        = string
  default     = null
}

variable "kms_alias" {
  description = "Alias of the KMS key (must start with `alias/`); null for `alias/<table_name>`."
  type        = string
  default     = null

  validation {
    condition     = var.kms_alias == null || can(regex("^alias/[A-Za-z0-9/_-]{1,250}$", var.kms_alias))
    error_message = "kms_alias must look like alias/NAME (letters, digits, '/', '_', '-'), and must not start with alias/aws."
  }

  validation {
    condition     = var.kms_alias == null || !startswith(coalesce(var.kms_alias, "-"), "alias/aws")
    error_message = "kms_alias must not start with alias/aws (reserved for AWS managed keys)."
  }
}

variable "kms_deletion_window_days" {
  description = "Days a deleted KMS key waits before it is destroyed (and everything it encrypted with it)."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days must be between 7 and 30."
  }
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default     = {}
}
