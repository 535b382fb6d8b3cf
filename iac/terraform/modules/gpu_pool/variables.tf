variable "name" {
  description = "Prefix of every name (cluster `<name>-pool`, capacity provider `<name>-gpu`, ...)."
  type        = string

  validation {
    # 32 characters is the load balancer's and target group's limit ("<name>-scaler").
    condition     = can(regex("^[a-z][a-z0-9-]{0,23}$", var.name))
    error_message = "name must start with a lower-case letter and be at most 24 lower-case letters, digits and '-'."
  }

  validation {
    condition     = !startswith(var.name, "aws") && !startswith(var.name, "ecs") && !startswith(var.name, "fargate")
    error_message = "name must not start with aws, ecs or fargate (reserved for ECS capacity providers)."
  }
}

variable "vpc_id" {
  description = "VPC of the pool."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "subnet_ids" {
  description = "Private subnets (at least two, in different Availability Zones) for the GPU instances, the worker and scaler tasks and the load balancer. They need outbound HTTPS (NAT gateway or VPC endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2 && alltrue([for id in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", id))])
    error_message = "subnet_ids must hold at least two subnet ids (subnet-...)."
  }
}

variable "client_security_group_ids" {
  description = "Security groups allowed to call the pool (the functions' group)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for id in var.client_security_group_ids : can(regex("^sg-[0-9a-f]+$", id))])
    error_message = "client_security_group_ids must be security group ids (sg-...)."
  }
}

variable "image" {
  description = "Container image URI of the worker: a CUDA build of ferry (the Dockerfile's `worker-cuda` target). Also the scaler's unless scaler_image is set."
  type        = string

  validation {
    condition     = length(var.image) > 0 && !can(regex("\\s", var.image))
    error_message = "image must be a container image URI without spaces."
  }
}

variable "scaler_image" {
  description = "Container image URI of the scaler (a build with the `aws` feature, e.g. the Dockerfile's default target); null to use image."
  type        = string
  default     = null

  validation {
    condition     = var.scaler_image == null || can(regex("^\\S+$", var.scaler_image))
    error_message = "scaler_image must be a container image URI without spaces."
  }
}

variable "scaler_cpu_architecture" {
  description = "CPU architecture of the scaler's image on Fargate: X86_64 or ARM64."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.scaler_cpu_architecture)
    error_message = "scaler_cpu_architecture must be X86_64 or ARM64."
  }
}

variable "instance_type" {
  description = "GPU instance type of the pool (one worker per instance, one GPU per worker)."
  type        = string
  default     = "g6.xlarge"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must be an EC2 instance type such as g6.xlarge."
  }
}

variable "max_instances" {
  description = "Most GPU instances the Auto Scaling group may run."
  type        = number
  default     = 2

  validation {
    condition     = var.max_instances >= 1 && floor(var.max_instances) == var.max_instances
    error_message = "max_instances must be a whole number, at least 1."
  }
}

variable "root_volume_size_gb" {
  description = "Root EBS volume of each GPU instance in GB (images and downloaded models)."
  type        = number
  default     = 100

  validation {
    condition     = var.root_volume_size_gb >= 30 && var.root_volume_size_gb <= 16384
    error_message = "root_volume_size_gb must be between 30 and 16384."
  }
}

variable "enable_ssm" {
  description = "Let Session Manager reach the GPU instances (for debugging)."
  type        = bool
  default     = false
}

variable "deployment_name" {
  description = "The pool deployment's name: models are registered with upstream `<pool_url>/<deployment_name>/v1`."
  type        = string
  default     = "gpu"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", var.deployment_name)) && var.deployment_name != "pool"
    error_message = "deployment_name must be 1-64 letters, digits, '.', '_' and '-', and not `pool`."
  }
}

variable "worker_args" {
  description = "More arguments of `ferry worker` (models, data directory); `--addr` and `--max-batch` are set by the module."
  type        = list(string)
  default     = ["--data-dir", "/data"]

  validation {
    condition     = length(setintersection(toset(var.worker_args), toset(["--addr", "--max-batch"]))) == 0
    error_message = "worker_args must not set --addr or --max-batch (the module sets them from the port and max_batch)."
  }
}

variable "max_batch" {
  description = "Calls one replica serves at once (the worker's `--max-batch`); more wait in the scaler."
  type        = number
  default     = 16

  validation {
    condition     = var.max_batch >= 1 && floor(var.max_batch) == var.max_batch
    error_message = "max_batch must be a whole number, at least 1."
  }
}

variable "min_replicas" {
  description = "Replicas kept even when idle; 0 lets the pool (and its GPU instances) scale to zero."
  type        = number
  default     = 0

  validation {
    condition     = var.min_replicas >= 0 && floor(var.min_replicas) == var.min_replicas
    error_message = "min_replicas must be a whole number, at least 0."
  }
}

variable "max_replicas" {
  description = "Most worker replicas (ECS tasks) the scaler runs; at most max_instances, one GPU each."
  type        = number
  default     = 2

  validation {
    condition     = var.max_replicas >= 1 && floor(var.max_replicas) == var.max_replicas
    error_message = "max_replicas must be a whole number, at least 1."
  }
}

variable "queue_deadline_seconds" {
  description = "How long a call may wait for a replica (a cold start included) before a 503; null for the scaler's default."
  type        = number
  default     = null

  validation {
    condition     = var.queue_deadline_seconds == null ? true : var.queue_deadline_seconds > 0
    error_message = "queue_deadline_seconds must be positive."
  }
}

variable "start_timeout_seconds" {
  description = "How long a replica may take to start and answer /readyz (instance boot, image pull, model download); null for the scaler's default."
  type        = number
  default     = null

  validation {
    condition     = var.start_timeout_seconds == null ? true : var.start_timeout_seconds > 0
    error_message = "start_timeout_seconds must be positive."
  }
}

variable "scale_to_zero_grace_seconds" {
  description = "How long the last replica stays once the deployment is idle; null for the scaler's default."
  type        = number
  default     = null

  validation {
    condition     = var.scale_to_zero_grace_seconds == null ? true : var.scale_to_zero_grace_seconds >= 0
    error_message = "scale_to_zero_grace_seconds must be at least 0."
  }
}

variable "worker_cpu" {
  description = "CPU units reserved for a worker task (1024 = one vCPU); leave room for the ECS agent."
  type        = number
  default     = 3072

  validation {
    condition     = var.worker_cpu >= 128
    error_message = "worker_cpu must be at least 128."
  }
}

variable "worker_memory_mib" {
  description = "Memory reserved for a worker task in MiB (a soft limit); leave room for the ECS agent."
  type        = number
  default     = 12288

  validation {
    condition     = var.worker_memory_mib >= 512
    error_message = "worker_memory_mib must be at least 512."
  }
}

variable "scaler_cpu" {
  description = "Fargate CPU units of the scaler task."
  type        = number
  default     = 512

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.scaler_cpu)
    error_message = "scaler_cpu must be a Fargate CPU size (256, 512, 1024, 2048, 4096, 8192, 16384)."
  }
}

variable "scaler_memory_mib" {
  description = "Fargate memory of the scaler task in MiB (must suit scaler_cpu)."
  type        = number
  default     = 1024

  validation {
    condition     = var.scaler_memory_mib >= 512 && var.scaler_memory_mib <= 122880
    error_message = "scaler_memory_mib must be between 512 and 122880."
  }
}

variable "listener_port" {
  description = "Port of the internal load balancer (pool_url omits it when 80)."
  type        = number
  default     = 80

  validation {
    condition     = var.listener_port >= 1 && var.listener_port <= 65535
    error_message = "listener_port must be between 1 and 65535."
  }
}

variable "idle_timeout_seconds" {
  description = "Load balancer idle timeout: at least the longest silence in a call (queueing through a cold start included)."
  type        = number
  default     = 900

  validation {
    condition     = var.idle_timeout_seconds >= 1 && var.idle_timeout_seconds <= 4000
    error_message = "idle_timeout_seconds must be between 1 and 4000."
  }
}

variable "deregistration_delay_seconds" {
  description = "How long the load balancer lets calls on a replaced scaler task finish."
  type        = number
  default     = 60

  validation {
    condition     = var.deregistration_delay_seconds >= 0 && var.deregistration_delay_seconds <= 3600
    error_message = "deregistration_delay_seconds must be between 0 and 3600."
  }
}

variable "deletion_protection" {
  description = "Refuse to delete the load balancer. Turn off only to tear down a test stack."
  type        = bool
  default     = true
}

variable "access_logs_bucket" {
  description = "Existing bucket for the load balancer's access logs (its policy must allow ELB log delivery); null for none."
  type        = string
  default     = null
}

variable "kms_key_arn" {
  description = "KMS key for the pool's log groups (its policy must let CloudWatch Logs use it, as the data module's does); null for CloudWatch's own encryption."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the worker's and scaler's logs."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of CloudWatch's retention periods."
  }
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default     = {}
}
