variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must be an AWS region such as us-east-1."
  }
}

variable "name" {
  description = "Prefix of every name; also the table's name unless table_name is set."
  type        = string
  default     = "ferry"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,23}$", var.name)) && !startswith(var.name, "aws") && !startswith(var.name, "ecs") && !startswith(var.name, "fargate")
    error_message = "name must be at most 24 lower-case letters, digits and '-', start with a letter, and not start with aws, ecs or fargate."
  }
}

variable "vpc_id" {
  description = "Existing VPC to deploy into."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "private_subnet_ids" {
  description = "Private subnets (two or more Availability Zones) with outbound HTTPS through a NAT gateway or VPC endpoints."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2 && alltrue([for id in var.private_subnet_ids : can(regex("^subnet-[0-9a-f]+$", id))])
    error_message = "private_subnet_ids must hold at least two subnet ids (subnet-...)."
  }
}

variable "package_zip" {
  description = "The Lambda zip: `cargo lambda build --release --arm64 --features aws --bin ferry --output-format zip` writes target/lambda/ferry/bootstrap.zip."
  type        = string
  default     = "../../../../target/lambda/ferry/bootstrap.zip"
}

variable "operator_key" {
  description = "The operator's API key, `fy_<12>_<32>` in lower-case base32 (see the README for a one-liner that makes one)."
  type        = string
  sensitive   = true
}

variable "oidc" {
  description = "OIDC issuer whose JWTs are accepted besides API keys; null for API keys only."
  type = object({
    jwks_url = string
    issuer   = string
    audience = string
  })
  default = null
}

variable "cors" {
  description = "CORS of the function URLs for browser callers (see the functions module); null for none."
  type = object({
    allow_origins     = list(string)
    allow_methods     = optional(list(string), ["*"])
    allow_headers     = optional(list(string), ["authorization", "content-type"])
    expose_headers    = optional(list(string), ["x-request-id", "retry-after"])
    max_age           = optional(number, 300)
    allow_credentials = optional(bool, false)
  })
  default = null
}

variable "table_name" {
  description = "DynamoDB table name; null for `name`."
  type        = string
  default     = null
}

variable "bucket_name" {
  description = "Export bucket name (globally unique); null for `<name>-exports-<account id>`."
  type        = string
  default     = null
}

variable "worker_image" {
  description = "Image URI of the GPU worker (the Dockerfile's `worker-cuda` target, pushed to ECR)."
  type        = string
}

variable "scaler_image" {
  description = "Image URI of the scaler (the Dockerfile's default target, built with the aws feature); null to use worker_image."
  type        = string
  default     = null
}

variable "gpu_instance_type" {
  description = "GPU instance type of the pool."
  type        = string
  default     = "g6.xlarge"
}

variable "max_gpu_instances" {
  description = "Most GPU instances (and worker replicas) the pool may run."
  type        = number
  default     = 2

  validation {
    condition     = var.max_gpu_instances >= 1
    error_message = "max_gpu_instances must be at least 1."
  }
}

variable "pool_deployment_name" {
  description = "Name of the pool deployment (models' upstream is `<pool_url>/<name>/v1`)."
  type        = string
  default     = "gpu"
}

variable "worker_args" {
  description = "Arguments of `ferry worker` besides --addr and --max-batch (models, data directory)."
  type        = list(string)
  default     = ["--data-dir", "/data"]
}

variable "alarm_email" {
  description = "Email address that receives the alarms; null for none."
  type        = string
  default     = null
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps every log group."
  type        = number
  default     = 30
}

variable "deletion_protection" {
  description = "Protect the table and the load balancer from deletion (turn off to tear down a test stack)."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default     = { Application = "ferry" }
}
