# Ferry's durable state: one DynamoDB table (single-table design: tenants, keys, models, prices,
# holds, ledger, usage), one S3 bucket (billing exports), and the customer-managed KMS key that
# encrypts both, plus the logs, queues and topics of the other modules.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.region
  kms_alias  = coalesce(var.kms_alias, "alias/${var.table_name}")
}

# ---- KMS ---------------------------------------------------------------------------------------

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111:A key policy's resource is the key itself ("*"); writes are limited to the account and, by condition, to named services.
  #checkov:skip=CKV_AWS_356:A key policy's resource is always "*" (the key it is attached to).
  #checkov:skip=CKV_AWS_109:The account-root statement is what lets IAM policies grant use of the key; without it the key cannot be managed.
  # The account administers the key and grants its use through IAM policies (the functions'
  # roles, DynamoDB and S3 acting for them); without this statement the key is unmanageable.
  statement {
    sid       = "AccountAdministersKey"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # CloudWatch Logs encrypts the functions' and the pool's log groups with this key.
  statement {
    sid = "CloudWatchLogsUseKey"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"]
    }
  }

  # CloudWatch alarms publish to the KMS-encrypted alarm topic, and EventBridge sends failed
  # billing jobs to the KMS-encrypted dead-letter queue: both services must make data keys.
  statement {
    sid     = "AlarmsAndEventsUseKey"
    actions = ["kms:Decrypt", "kms:GenerateDataKey*"]
    # A key policy's resource is always the key itself.
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com", "events.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_kms_key" "main" {
  description             = "Ferry data (${var.table_name}, ${var.bucket_name})"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = var.tags
}

resource "aws_kms_alias" "main" {
  name          = local.kms_alias
  target_key_id = aws_kms_key.main.key_id
}

# ---- DynamoDB ----------------------------------------------------------------------------------

resource "aws_dynamodb_table" "main" {
  name                        = var.table_name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "pk"
  range_key                   = "sk"
  deletion_protection_enabled = var.deletion_protection

  attribute {
    name = "pk"
    type = "S"
  }

  attribute {
    name = "sk"
    type = "S"
  }

  attribute {
    name = "gsi1pk"
    type = "S"
  }

  attribute {
    name = "gsi1sk"
    type = "S"
  }

  # The one secondary access path (e.g. a key by its public id, a tenant's objects by time).
  global_secondary_index {
    name            = "gsi1"
    hash_key        = "gsi1pk"
    range_key       = "gsi1sk"
    projection_type = "ALL"
  }

  # Items that carry `expires_at` (Unix seconds) are deleted by DynamoDB some time after it
  # passes, so short-lived records need no sweeper of their own.
  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  # Money lives here: keep 35 days of point-in-time restores.
  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.main.arn
  }

  tags = var.tags
}

# ---- S3 ----------------------------------------------------------------------------------------

resource "aws_s3_bucket" "main" {
  #checkov:skip=CKV_AWS_144:Exports can be re-made from the table (ferry billing close is idempotent); cross-region replication is left to the operator.
  #checkov:skip=CKV2_AWS_62:Nothing consumes export events yet; add notifications where a downstream system needs them.
  bucket        = var.bucket_name
  force_destroy = var.force_destroy
  tags          = var.tags
}

# ACLs off: the bucket policy and IAM decide everything.
resource "aws_s3_bucket_ownership_controls" "main" {
  bucket = aws_s3_bucket.main.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "main" {
  bucket                  = aws_s3_bucket.main.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "main" {
  bucket = aws_s3_bucket.main.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "main" {
  bucket = aws_s3_bucket.main.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.main.arn
    }
    # One data key per bucket rather than per object: far fewer KMS calls.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "main" {
  bucket = aws_s3_bucket.main.id

  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"
    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  # Versioning must be on before noncurrent-version rules mean anything.
  depends_on = [aws_s3_bucket_versioning.main]
}

resource "aws_s3_bucket_logging" "main" {
  count         = var.access_logs_bucket == null ? 0 : 1
  bucket        = aws_s3_bucket.main.id
  target_bucket = var.access_logs_bucket
  target_prefix = "${var.bucket_name}/"
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.main.arn,
      "${aws_s3_bucket.main.arn}/*",
    ]
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

resource "aws_s3_bucket_policy" "main" {
  bucket = aws_s3_bucket.main.id
  policy = data.aws_iam_policy_document.bucket.json

  # S3 rejects a policy put while the public access block is being applied.
  depends_on = [aws_s3_bucket_public_access_block.main]
}
