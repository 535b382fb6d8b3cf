# Ferry's three stateless functions, all from one zip: the `ferry` binary built for Lambda
# (provided.al2023, arm64) reads Lambda's `_HANDLER` variable, i.e. the `handler` set here, to
# choose which router to serve.

data "aws_partition" "current" {}

locals {
  partition = data.aws_partition.current.partition
  vpc       = length(var.subnet_ids) > 0

  functions = {
    gateway = {
      memory_mb            = var.memory_mb.gateway
      timeout_seconds      = var.timeout_seconds.gateway
      reserved_concurrency = var.reserved_concurrency.gateway
    }
    admin = {
      memory_mb            = var.memory_mb.admin
      timeout_seconds      = var.timeout_seconds.admin
      reserved_concurrency = var.reserved_concurrency.admin
    }
    billing = {
      memory_mb            = var.memory_mb.billing
      timeout_seconds      = var.timeout_seconds.billing
      reserved_concurrency = var.reserved_concurrency.billing
    }
  }

  # Functions callers reach over HTTPS (the billing function is only invoked by its schedule).
  url_functions = toset(["gateway", "admin"])

  oidc_environment = var.oidc == null ? {} : {
    FERRY_JWT_JWKS_URL = var.oidc.jwks_url
    FERRY_JWT_ISSUER   = var.oidc.issuer
    FERRY_JWT_AUDIENCE = var.oidc.audience
  }

  edge_environment = var.edge == null ? {} : {
    FERRY_EDGE_SECRET       = var.edge.shared_secret
    FERRY_EDGE_GRANT_SECRET = var.edge.grant_secret
  }

  # Each function's environment. The names are a contract with the Rust binary: add none here
  # that it does not read.
  environment = {
    gateway = merge({
      FERRY_STORE          = "dynamodb"
      FERRY_DYNAMODB_TABLE = var.table_name
      FERRY_S3_BUCKET      = var.bucket_name
      FERRY_LOG_JSON       = "true"
    }, local.oidc_environment, local.edge_environment)
    admin = merge({
      FERRY_STORE          = "dynamodb"
      FERRY_DYNAMODB_TABLE = var.table_name
      FERRY_LOG_JSON       = "true"
      FERRY_OPERATOR_KEY   = var.operator_key
    }, local.oidc_environment)
    billing = {
      FERRY_STORE          = "dynamodb"
      FERRY_DYNAMODB_TABLE = var.table_name
      FERRY_S3_BUCKET      = var.bucket_name
      FERRY_LOG_JSON       = "true"
    }
  }

  # Least privilege on the table, per function: only admin deletes; only billing scans
  # (closing a month and reconciling go over every tenant). IAM authorizes a
  # TransactWriteItems call by its parts (PutItem, UpdateItem, DeleteItem, and
  # ConditionCheckItem for its condition checks, which the store's money transactions use).
  # These lists must equal `ferry_aws::schema::dynamodb_actions` (a contract test checks).
  dynamodb_actions = {
    gateway = [
      "dynamodb:GetItem",
      "dynamodb:Query",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:ConditionCheckItem",
    ]
    admin = [
      "dynamodb:GetItem",
      "dynamodb:Query",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:DeleteItem",
      "dynamodb:ConditionCheckItem",
    ]
    billing = [
      "dynamodb:GetItem",
      "dynamodb:Query",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:ConditionCheckItem",
      "dynamodb:Scan",
    ]
  }

  # S3, per function: billing writes its exports; the gateway keeps uploaded files (the Files
  # API) under files/ and batches under batches/. These lists must equal `ferry_aws::schema::s3_actions`.
  s3_actions = {
    gateway = ["s3:DeleteObject", "s3:GetObject", "s3:ListBucket", "s3:PutObject"]
    admin   = []
    billing = ["s3:PutObject"]
  }

  s3_resources = {
    gateway = ["${var.bucket_arn}/files/*", "${var.bucket_arn}/batches/*"]
    admin   = []
    billing = ["${var.bucket_arn}/exports/*"]
  }
}

# ---- Logs --------------------------------------------------------------------------------------

# Made here rather than by Lambda on first write, so that retention and encryption apply and
# each role can be limited to its own group.
resource "aws_cloudwatch_log_group" "function" {
  #checkov:skip=CKV_AWS_338:Retention is var.log_retention_days; the money records live in DynamoDB, logs are operational.
  for_each          = local.functions
  name              = "/aws/lambda/${var.name}-${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

# ---- IAM ---------------------------------------------------------------------------------------

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "function" {
  for_each           = local.functions
  name               = "${var.name}-${each.key}"
  description        = "Ferry ${each.key} function"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "function" {
  for_each = local.functions

  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function[each.key].arn}:*"]
  }

  statement {
    sid       = "Table"
    actions   = local.dynamodb_actions[each.key]
    resources = [var.table_arn, "${var.table_arn}/index/*"]
  }

  # The environment (operator key) is encrypted with the CMK; so are the table and the bucket.
  statement {
    sid       = "Key"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }

  dynamic "statement" {
    for_each = length(local.s3_actions[each.key]) > 0 ? [1] : []
    content {
      sid       = "Objects"
      actions   = [for action in local.s3_actions[each.key] : action if action != "s3:ListBucket"]
      resources = local.s3_resources[each.key]
    }
  }

  # Listing is on the bucket, limited to the function's own prefix.
  dynamic "statement" {
    for_each = contains(local.s3_actions[each.key], "s3:ListBucket") ? [1] : []
    content {
      sid       = "List"
      actions   = ["s3:ListBucket"]
      resources = [var.bucket_arn]
      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["files/*", "batches/*"]
      }
    }
  }

  dynamic "statement" {
    for_each = var.tracing_mode == "Active" ? [1] : []
    content {
      sid       = "Tracing"
      actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
      resources = ["*"] # X-Ray has no resource-level permissions.
    }
  }
}

resource "aws_iam_role_policy" "function" {
  for_each = local.functions
  name     = "ferry-${each.key}"
  role     = aws_iam_role.function[each.key].id
  policy   = data.aws_iam_policy_document.function[each.key].json
}

# Network interfaces for functions placed in the VPC (to reach the internal GPU pool).
resource "aws_iam_role_policy_attachment" "vpc" {
  for_each   = local.vpc ? local.functions : {}
  role       = aws_iam_role.function[each.key].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

# ---- Functions ---------------------------------------------------------------------------------

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_116:Gateway and admin are invoked synchronously (function URLs); billing's jobs are idempotent, retried by Lambda, and a failed one raises the function's Errors alarm.
  #checkov:skip=CKV_AWS_272:Code signing is left to the operator's release pipeline.
  for_each = local.functions

  function_name    = "${var.name}-${each.key}"
  description      = "Ferry ${each.key}"
  role             = aws_iam_role.function[each.key].arn
  filename         = var.package_zip
  source_code_hash = filebase64sha256(var.package_zip)
  runtime          = "provided.al2023"
  architectures    = ["arm64"]
  handler          = each.key
  memory_size      = each.value.memory_mb
  timeout          = each.value.timeout_seconds
  kms_key_arn      = var.kms_key_arn

  # -1: no reservation, the function shares the account's pool.
  reserved_concurrent_executions = each.value.reserved_concurrency == null ? -1 : each.value.reserved_concurrency

  environment {
    variables = local.environment[each.key]
  }

  dynamic "vpc_config" {
    for_each = local.vpc ? [1] : []
    content {
      subnet_ids         = var.subnet_ids
      security_group_ids = var.security_group_ids
    }
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.function[each.key].name
  }

  tracing_config {
    mode = var.tracing_mode
  }

  tags = var.tags

  lifecycle {
    precondition {
      condition     = length(var.subnet_ids) == 0 || length(var.security_group_ids) > 0
      error_message = "security_group_ids must not be empty when subnet_ids is set."
    }
  }

  # The role must be able to write logs (and make ENIs) before the first invocation.
  depends_on = [
    aws_iam_role_policy.function,
    aws_iam_role_policy_attachment.vpc,
  ]
}

# ---- Function URLs -----------------------------------------------------------------------------

resource "aws_lambda_function_url" "this" {
  #checkov:skip=CKV_AWS_258:Public on purpose: Ferry authenticates every request itself (API keys, OIDC JWTs, the operator key).
  for_each           = local.url_functions
  function_name      = aws_lambda_function.this[each.key].function_name
  authorization_type = "NONE"
  # Streams the response as it is written: SSE token streams reach the caller as they come.
  invoke_mode = "RESPONSE_STREAM"

  dynamic "cors" {
    for_each = var.cors == null ? [] : [var.cors]
    content {
      allow_origins     = cors.value.allow_origins
      allow_methods     = cors.value.allow_methods
      allow_headers     = cors.value.allow_headers
      expose_headers    = cors.value.expose_headers
      max_age           = cors.value.max_age
      allow_credentials = cors.value.allow_credentials
    }
  }
}

# A public (NONE) function URL needs two statements in the function's resource policy:
# lambda:InvokeFunctionUrl for auth type NONE, and, since October 2025, lambda:InvokeFunction
# limited to calls that come through the function URL. The statement ids differ from the ones
# the provider or console may add on their own, so the two never collide.
resource "aws_lambda_permission" "url_public" {
  #checkov:skip=CKV_AWS_301:Public on purpose, and only through the function URL; Ferry authenticates every request itself.
  for_each               = local.url_functions
  statement_id           = "FerryPublicFunctionUrl"
  action                 = "lambda:InvokeFunctionUrl"
  function_name          = aws_lambda_function.this[each.key].function_name
  principal              = "*"
  function_url_auth_type = "NONE"
}

resource "aws_lambda_permission" "url_invoke" {
  #checkov:skip=CKV_AWS_301:Public on purpose, and only through the function URL (invoked_via_function_url); Ferry authenticates every request itself.
  for_each                 = local.url_functions
  statement_id             = "FerryInvokeViaFunctionUrl"
  action                   = "lambda:InvokeFunction"
  function_name            = aws_lambda_function.this[each.key].function_name
  principal                = "*"
  invoked_via_function_url = true
}
