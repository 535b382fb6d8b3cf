# Ferry on AWS, end to end, in an existing VPC:
#
#   client ──HTTPS──▶ gateway / admin function URLs (Lambda, in the VPC's private subnets)
#                        │ DynamoDB (state, money), S3 (exports)
#                        └──HTTP──▶ internal ALB ──▶ scaler (Fargate) ──▶ GPU worker tasks (ECS)
#   EventBridge ──▶ billing function (expire holds, close the month, reconcile)

locals {
  table_name  = coalesce(var.table_name, var.name)
  bucket_name = coalesce(var.bucket_name, "${var.name}-exports-${data.aws_caller_identity.current.account_id}")
}

data "aws_caller_identity" "current" {}

module "data" {
  source = "../../modules/data"

  table_name          = local.table_name
  bucket_name         = local.bucket_name
  deletion_protection = var.deletion_protection
  # A stack without deletion protection is a test stack: let destroy empty the bucket too.
  force_destroy = !var.deletion_protection
  tags          = var.tags
}

# The functions' own security group: out to the pool and to AWS APIs (through the VPC's NAT
# gateway or endpoints), nothing in (function URLs do not enter through the VPC).
resource "aws_security_group" "functions" {
  name        = "${var.name}-functions"
  description = "Ferry functions: pool and AWS APIs out, nothing in"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_egress_rule" "functions_https" {
  security_group_id = aws_security_group.functions.id
  description       = "HTTPS to AWS APIs, OIDC issuers and external upstreams"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "functions_to_pool" {
  security_group_id            = aws_security_group.functions.id
  description                  = "To the GPU pool's internal load balancer"
  referenced_security_group_id = module.gpu_pool.security_group_ids["alb"]
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
}

module "functions" {
  source = "../../modules/functions"

  name               = var.name
  package_zip        = var.package_zip
  table_name         = module.data.table_name
  table_arn          = module.data.table_arn
  bucket_name        = module.data.bucket_name
  bucket_arn         = module.data.bucket_arn
  kms_key_arn        = module.data.kms_key_arn
  operator_key       = var.operator_key
  oidc               = var.oidc
  subnet_ids         = var.private_subnet_ids
  security_group_ids = [aws_security_group.functions.id]
  cors               = var.cors
  log_retention_days = var.log_retention_days
  tags               = var.tags
}

module "billing_schedule" {
  source = "../../modules/billing_schedule"

  name          = var.name
  function_name = module.functions.function_names["billing"]
  function_arn  = module.functions.function_arns["billing"]
  kms_key_arn   = module.data.kms_key_arn
  tags          = var.tags
}

module "gpu_pool" {
  source = "../../modules/gpu_pool"

  name                      = var.name
  vpc_id                    = var.vpc_id
  subnet_ids                = var.private_subnet_ids
  client_security_group_ids = [aws_security_group.functions.id]
  image                     = var.worker_image
  scaler_image              = var.scaler_image
  instance_type             = var.gpu_instance_type
  max_instances             = var.max_gpu_instances
  max_replicas              = var.max_gpu_instances
  deployment_name           = var.pool_deployment_name
  worker_args               = var.worker_args
  deletion_protection       = var.deletion_protection
  kms_key_arn               = module.data.kms_key_arn
  log_retention_days        = var.log_retention_days
  tags                      = var.tags
}

module "alarms" {
  source = "../../modules/alarms"

  name           = var.name
  function_names = module.functions.function_names
  table_name     = module.data.table_name
  dlq_name       = module.billing_schedule.dlq_name
  alarm_email    = var.alarm_email
  kms_key_arn    = module.data.kms_key_arn
  tags           = var.tags
}
