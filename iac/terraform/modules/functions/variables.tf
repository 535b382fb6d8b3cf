variable "name" {
  description = "Prefix of every name (functions are `<name>-gateway`, `<name>-admin`, `<name>-billing`)."
  type        = string

  validation {
    # 64 characters is Lambda's and IAM's limit; the longest suffix is "-billing".
    condition     = can(regex("^[A-Za-z][A-Za-z0-9-]{0,47}$", var.name))
    error_message = "name must start with a letter and be at most 48 letters, digits and '-'."
  }
}

variable "package_zip" {
  description = "Path of the Lambda zip made by `cargo lambda build --release --arm64 --features aws --bin ferry --output-format zip` (target/lambda/ferry/bootstrap.zip)."
  type        = string

  validation {
    condition     = endswith(var.package_zip, ".zip")
    error_message = "package_zip must be the path of a .zip file."
  }
}

variable "table_name" {
  description = "Name of the DynamoDB table (FERRY_DYNAMODB_TABLE)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]{3,255}$", var.table_name))
    error_message = "table_name must be 3-255 characters of letters, digits, '_', '-' and '.'."
  }
}

variable "table_arn" {
  description = "ARN of the DynamoDB table."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:dynamodb:[a-z0-9-]+:[0-9]{12}:table/[A-Za-z0-9_.-]+$", var.table_arn))
    error_message = "table_arn must be a DynamoDB table ARN."
  }
}

variable "bucket_name" {
  description = "Name of the bucket (FERRY_S3_BUCKET): billing's exports, the gateway's uploaded files."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name."
  }
}

variable "bucket_arn" {
  description = "ARN of the export bucket; billing may write under `exports/` only."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_arn))
    error_message = "bucket_arn must be an S3 bucket ARN."
  }
}

variable "kms_key_arn" {
  description = "ARN of the KMS key for the functions' environment and log groups (its key policy must let CloudWatch Logs use it, as the data module's does)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN (arn:...:key/ID), not an alias."
  }
}

variable "operator_key" {
  description = "The operator's API key (FERRY_OPERATOR_KEY, admin only): `fy_<12>_<32>` in lower-case base32 (a-z, 2-7). It is stored in the Terraform state: keep the state encrypted."
  type        = string
  sensitive   = true

  validation {
    condition     = length(var.operator_key) >= 32 && can(regex("^fy_[a-z2-7]{12}_[a-z2-7]{32}$", var.operator_key))
    error_message = "operator_key must look like fy_<12 chars>_<32 chars> in lower-case base32 (a-z, 2-7)."
  }
}

variable "oidc" {
  description = "OIDC issuer whose JWTs the gateway and admin accept besides API keys; null for API keys only."
  type = object({
    jwks_url = string
    issuer   = string
    audience = string
  })
  default = null

  validation {
    condition     = var.oidc == null || can(regex("^https://", var.oidc.jwks_url))
    error_message = "oidc.jwks_url must be an https:// URL."
  }
}

variable "edge" {
  description = "Secrets for Ferry's edge components: the one shared with them (hit reports are signed with it) and the gateway's own grant key; null for no edges."
  type = object({
    shared_secret = string
    grant_secret  = string
  })
  default   = null
  sensitive = true

  validation {
    condition     = var.edge == null || (length(var.edge.shared_secret) >= 32 && length(var.edge.grant_secret) >= 32)
    error_message = "edge secrets must each be at least 32 characters."
  }
}

variable "memory_mb" {
  description = "Memory of each function in MB (CPU grows with it)."
  type = object({
    gateway = optional(number, 1024)
    admin   = optional(number, 512)
    billing = optional(number, 1024)
  })
  default = {}

  validation {
    condition     = alltrue([for value in values(var.memory_mb) : value >= 128 && value <= 10240])
    error_message = "memory_mb values must be between 128 and 10240."
  }
}

variable "timeout_seconds" {
  description = "Timeout of each function in seconds. The gateway's bounds the longest stream, so it defaults to Lambda's maximum."
  type = object({
    gateway = optional(number, 900)
    admin   = optional(number, 30)
    billing = optional(number, 900)
  })
  default = {}

  validation {
    condition     = alltrue([for value in values(var.timeout_seconds) : value >= 1 && value <= 900])
    error_message = "timeout_seconds values must be between 1 and 900."
  }
}

variable "reserved_concurrency" {
  description = "Reserved concurrent executions per function; null leaves a function unreserved."
  type = object({
    gateway = optional(number)
    admin   = optional(number)
    billing = optional(number)
  })
  default = {}

  validation {
    condition     = alltrue([for value in values(var.reserved_concurrency) : value == null ? true : value >= 0])
    error_message = "reserved_concurrency values must be null or at least 0."
  }
}

variable "subnet_ids" {
  description = "Private subnets to place the functions in (needed to reach the internal GPU pool); empty for no VPC."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for id in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", id))])
    error_message = "subnet_ids must be subnet ids (subnet-...)."
  }
}

variable "security_group_ids" {
  description = "Security groups of the functions when subnet_ids is set (give the GPU pool this group as a client)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for id in var.security_group_ids : can(regex("^sg-[0-9a-f]+$", id))])
    error_message = "security_group_ids must be security group ids (sg-...)."
  }
}

variable "cors" {
  description = "CORS of the function URLs, for browser callers; null for none."
  type = object({
    allow_origins     = list(string)
    allow_methods     = optional(list(string), ["*"])
    allow_headers     = optional(list(string), ["authorization", "content-type"])
    expose_headers    = optional(list(string), ["x-request-id", "retry-after"])
    max_age           = optional(number, 300)
    allow_credentials = optional(bool, false)
  })
  default = null

  validation {
    condition     = var.cors == null ? true : length(var.cors.allow_origins) > 0 && var.cors.max_age >= 0 && var.cors.max_age <= 86400
    error_message = "cors.allow_origins must not be empty and cors.max_age must be between 0 and 86400."
  }
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the functions' logs."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of CloudWatch's retention periods (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)."
  }
}

variable "tracing_mode" {
  description = "X-Ray tracing: `PassThrough` (off unless the caller samples) or `Active`."
  type        = string
  default     = "PassThrough"

  validation {
    condition     = contains(["PassThrough", "Active"], var.tracing_mode)
    error_message = "tracing_mode must be PassThrough or Active."
  }
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default     = {}
}
