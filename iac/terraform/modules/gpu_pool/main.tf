# The GPU pool on ECS, from zero instances up:
#
#   functions ──▶ internal ALB :listener_port ──▶ scaler (Fargate, 1 task) :8090
#                                                   │ RunTask / StopTask (capacity provider)
#                                                   ▼
#                          worker tasks (awsvpc, 1 GPU each) :8080 on a GPU Auto Scaling group
#
# The scaler (`ferry scaler`, ECS provider) is both the activator (it queues calls while a
# replica starts and proxies them once it is ready) and the autoscaler (it starts one ECS task
# per replica and stops drained ones). The capacity provider's managed scaling then adds GPU
# instances for tasks waiting in PROVISIONING, and removes idle ones, down to none.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

# The latest ECS-optimised Amazon Linux 2023 GPU AMI (NVIDIA driver, container toolkit, agent).
data "aws_ssm_parameter" "gpu_ami" {
  name = "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
}

locals {
  account_id   = data.aws_caller_identity.current.account_id
  partition    = data.aws_partition.current.partition
  region       = data.aws_region.current.region
  cluster_name = "${var.name}-pool"
  worker_port  = 8080
  scaler_port  = 8090

  worker_family = "${var.name}-worker"
  scaler_image  = coalesce(var.scaler_image, var.image)

  pool_url = var.listener_port == 80 ? "http://${aws_lb.pool.dns_name}" : "http://${aws_lb.pool.dns_name}:${var.listener_port}"

  # `ferry scaler` reads this document from FERRY_SCALER_CONFIG_TOML.
  scaler_config = templatefile("${path.module}/scaler.toml.tftpl", {
    deployment_name             = var.deployment_name
    max_batch                   = var.max_batch
    min_replicas                = var.min_replicas
    max_replicas                = var.max_replicas
    queue_deadline_seconds      = var.queue_deadline_seconds
    start_timeout_seconds       = var.start_timeout_seconds
    scale_to_zero_grace_seconds = var.scale_to_zero_grace_seconds
    cluster                     = aws_ecs_cluster.pool.name
    task_definition             = aws_ecs_task_definition.worker.arn
    capacity_provider           = aws_ecs_capacity_provider.gpu.name
    subnets                     = var.subnet_ids
    security_groups             = [aws_security_group.worker.id]
    port                        = local.worker_port
  })
}

# ---- Cluster and GPU capacity ------------------------------------------------------------------

resource "aws_ecs_cluster" "pool" {
  name = local.cluster_name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  tags = var.tags
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "instance" {
  name               = "${var.name}-pool-instance"
  description        = "Ferry GPU pool container instances (ECS agent)"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "instance_ecs" {
  role       = aws_iam_role.instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
}

# Session Manager access to the GPU hosts, for debugging drivers; off unless asked for.
resource "aws_iam_role_policy_attachment" "instance_ssm" {
  count      = var.enable_ssm ? 1 : 0
  role       = aws_iam_role.instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "instance" {
  name = "${var.name}-pool-instance"
  role = aws_iam_role.instance.name
  tags = var.tags
}

resource "aws_launch_template" "gpu" {
  name_prefix            = "${var.name}-pool-"
  description            = "Ferry GPU pool instances"
  image_id               = data.aws_ssm_parameter.gpu_ami.insecure_value
  instance_type          = var.instance_type
  update_default_version = true
  vpc_security_group_ids = [aws_security_group.instance.id]

  iam_instance_profile {
    arn = aws_iam_instance_profile.instance.arn
  }

  # ECS_AWSVPC_BLOCK_IMDS keeps tasks away from the instance's credentials;
  # prefer-cached skips re-pulling the (large) worker image on a warm instance.
  user_data = base64encode(<<-EOT
    #!/bin/bash
    cat >> /etc/ecs/ecs.config <<'CONFIG'
    ECS_CLUSTER=${local.cluster_name}
    ECS_ENABLE_GPU_SUPPORT=true
    ECS_AWSVPC_BLOCK_IMDS=true
    ECS_IMAGE_PULL_BEHAVIOR=prefer-cached
    ECS_CONTAINER_INSTANCE_PROPAGATE_TAGS_FROM=ec2_instance
    CONFIG
  EOT
  )

  # IMDSv2 only, one hop: the agent (host network) reaches it, containers do not.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  monitoring {
    enabled = true
  }

  # Encrypted with the account's default EBS key: a customer key would also need a grant for
  # the Auto Scaling service-linked role.
  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.root_volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name}-pool-gpu" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = var.tags
  }

  tags = var.tags
}

resource "aws_autoscaling_group" "gpu" {
  name                = "${var.name}-pool-gpu"
  vpc_zone_identifier = var.subnet_ids
  min_size            = 0
  max_size            = var.max_instances
  # ECS managed scaling owns the desired count from here on (see ignore_changes).
  desired_capacity      = 0
  health_check_type     = "EC2"
  protect_from_scale_in = true # required by managed termination protection

  launch_template {
    id      = aws_launch_template.gpu.id
    version = aws_launch_template.gpu.latest_version
  }

  # Required on an Auto Scaling group used by an ECS capacity provider with managed scaling.
  tag {
    key                 = "AmazonECSManaged"
    value               = "true"
    propagate_at_launch = true
  }

  dynamic "tag" {
    for_each = var.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    ignore_changes = [desired_capacity]
  }
}

resource "aws_ecs_capacity_provider" "gpu" {
  name = "${var.name}-gpu"

  auto_scaling_group_provider {
    auto_scaling_group_arn = aws_autoscaling_group.gpu.arn
    # An instance running a worker is never scaled in under it; the scaler drains first.
    managed_termination_protection = "ENABLED"
    managed_draining               = "ENABLED"

    # target_capacity 100: exactly as many instances as the tasks need (none for none).
    managed_scaling {
      status                    = "ENABLED"
      target_capacity           = 100
      minimum_scaling_step_size = 1
      maximum_scaling_step_size = var.max_instances
      instance_warmup_period    = 300
    }
  }

  tags = var.tags
}

resource "aws_ecs_cluster_capacity_providers" "pool" {
  cluster_name       = aws_ecs_cluster.pool.name
  capacity_providers = [aws_ecs_capacity_provider.gpu.name]

  default_capacity_provider_strategy {
    capacity_provider = aws_ecs_capacity_provider.gpu.name
    weight            = 1
  }
}

# ---- Security groups ---------------------------------------------------------------------------

resource "aws_security_group" "alb" {
  name        = "${var.name}-pool-alb"
  description = "Ferry pool load balancer: clients in, scaler out"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_security_group" "scaler" {
  name        = "${var.name}-pool-scaler"
  description = "Ferry pool scaler: load balancer in; workers and AWS APIs out"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_security_group" "worker" {
  #checkov:skip=CKV2_AWS_5:Attached to each worker task's network interface by the scaler's RunTask calls (its id is in the scaler's config).
  name        = "${var.name}-pool-worker"
  description = "Ferry pool worker tasks: scaler in; image and model downloads out"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_security_group" "instance" {
  name        = "${var.name}-pool-instance"
  description = "Ferry pool GPU hosts: ECS agent, ECR and SSM out"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_from_clients" {
  #checkov:skip=CKV_AWS_260:The source is the clients' security group, not 0.0.0.0/0.
  for_each                     = toset(var.client_security_group_ids)
  security_group_id            = aws_security_group.alb.id
  description                  = "Ferry functions to the pool"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = var.listener_port
  to_port                      = var.listener_port
}

resource "aws_vpc_security_group_egress_rule" "alb_to_scaler" {
  security_group_id            = aws_security_group.alb.id
  description                  = "Load balancer to the scaler"
  referenced_security_group_id = aws_security_group.scaler.id
  ip_protocol                  = "tcp"
  from_port                    = local.scaler_port
  to_port                      = local.scaler_port
}

resource "aws_vpc_security_group_ingress_rule" "scaler_from_alb" {
  security_group_id            = aws_security_group.scaler.id
  description                  = "Load balancer to the scaler"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = local.scaler_port
  to_port                      = local.scaler_port
}

resource "aws_vpc_security_group_egress_rule" "scaler_to_workers" {
  security_group_id            = aws_security_group.scaler.id
  description                  = "Scaler to worker replicas"
  referenced_security_group_id = aws_security_group.worker.id
  ip_protocol                  = "tcp"
  from_port                    = local.worker_port
  to_port                      = local.worker_port
}

resource "aws_vpc_security_group_ingress_rule" "worker_from_scaler" {
  security_group_id            = aws_security_group.worker.id
  description                  = "Scaler to worker replicas"
  referenced_security_group_id = aws_security_group.scaler.id
  ip_protocol                  = "tcp"
  from_port                    = local.worker_port
  to_port                      = local.worker_port
}

# HTTPS out (through the VPC's NAT gateway or endpoints): the ECS, ECR, CloudWatch and SSM APIs,
# and the worker's pinned model downloads.
resource "aws_vpc_security_group_egress_rule" "https" {
  for_each = {
    scaler   = aws_security_group.scaler.id
    worker   = aws_security_group.worker.id
    instance = aws_security_group.instance.id
  }
  security_group_id = each.value
  description       = "HTTPS to AWS APIs, ECR and model downloads"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

# ---- Logs --------------------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "pool" {
  #checkov:skip=CKV_AWS_338:Retention is var.log_retention_days; these logs are operational.
  for_each          = toset(["worker", "scaler"])
  name              = "/ecs/${var.name}-pool/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

# ---- Task roles --------------------------------------------------------------------------------

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# Pulls images and writes logs for both task definitions.
resource "aws_iam_role" "execution" {
  name               = "${var.name}-pool-execution"
  description        = "Ferry GPU pool task execution (image pulls, logs)"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

# The worker calls no AWS API: its role has no permissions.
resource "aws_iam_role" "worker" {
  name               = "${var.name}-pool-worker"
  description        = "Ferry GPU pool worker tasks (no AWS permissions)"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

resource "aws_iam_role" "scaler" {
  name               = "${var.name}-pool-scaler"
  description        = "Ferry GPU pool scaler: runs and stops worker tasks"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "scaler" {
  statement {
    sid     = "RunWorkers"
    actions = ["ecs:RunTask"]
    resources = [
      "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task-definition/${local.worker_family}:*",
    ]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.pool.arn]
    }
  }

  # RunTask tags each replica (deployment, replica id); tagging on create needs TagResource.
  statement {
    sid       = "TagWorkersOnRun"
    actions   = ["ecs:TagResource"]
    resources = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${local.cluster_name}/*"]
    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RunTask"]
    }
  }

  statement {
    sid       = "ManageWorkers"
    actions   = ["ecs:StopTask", "ecs:DescribeTasks"]
    resources = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${local.cluster_name}/*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.pool.arn]
    }
  }

  # ListTasks is authorized on container instances; the cluster condition limits it to the pool.
  statement {
    sid       = "ListWorkers"
    actions   = ["ecs:ListTasks"]
    resources = ["*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.pool.arn]
    }
  }

  statement {
    sid       = "PassWorkerRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.worker.arn, aws_iam_role.execution.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "scaler" {
  name   = "ferry-scaler"
  role   = aws_iam_role.scaler.id
  policy = data.aws_iam_policy_document.scaler.json
}

# ---- Worker task definition --------------------------------------------------------------------

resource "aws_ecs_task_definition" "worker" {
  family                   = local.worker_family
  network_mode             = "awsvpc"
  requires_compatibilities = ["EC2"]
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.worker.arn

  container_definitions = jsonencode([
    {
      name      = "worker"
      image     = var.image
      essential = true
      # --max-batch follows max_batch, so the scaler never sends a replica more than it batches.
      command = concat(
        ["worker", "--addr", "0.0.0.0:${local.worker_port}", "--max-batch", tostring(var.max_batch)],
        var.worker_args,
      )
      cpu               = var.worker_cpu
      memoryReservation = var.worker_memory_mib
      portMappings = [
        { containerPort = local.worker_port, protocol = "tcp" },
      ]
      resourceRequirements = [
        { type = "GPU", value = "1" },
      ]
      # No container health check: the scaler gates each replica on /readyz itself.
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.pool["worker"].name
          awslogs-region        = local.region
          awslogs-stream-prefix = "worker"
        }
      }
    },
  ])

  tags = var.tags
}

# ---- Scaler ------------------------------------------------------------------------------------

resource "aws_ecs_task_definition" "scaler" {
  family                   = "${var.name}-scaler"
  network_mode             = "awsvpc"
  requires_compatibilities = ["FARGATE"]
  cpu                      = var.scaler_cpu
  memory                   = var.scaler_memory_mib
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.scaler.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.scaler_cpu_architecture
  }

  container_definitions = jsonencode([
    {
      name                   = "scaler"
      image                  = local.scaler_image
      essential              = true
      command                = ["scaler"]
      readonlyRootFilesystem = true
      # The scaler's shutdown: 30 s for calls in flight, then 5 s to stop its replicas.
      stopTimeout = 60
      environment = [
        { name = "FERRY_SCALER_CONFIG_TOML", value = local.scaler_config },
        { name = "FERRY_SCALER_ADDR", value = "0.0.0.0:${local.scaler_port}" },
        { name = "FERRY_LOG_JSON", value = "true" },
      ]
      portMappings = [
        { containerPort = local.scaler_port, protocol = "tcp" },
      ]
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.pool["scaler"].name
          awslogs-region        = local.region
          awslogs-stream-prefix = "scaler"
        }
      }
    },
  ])

  tags = var.tags
}

resource "aws_ecs_service" "scaler" {
  name             = "${var.name}-scaler"
  cluster          = aws_ecs_cluster.pool.id
  task_definition  = aws_ecs_task_definition.scaler.arn
  desired_count    = 1
  launch_type      = "FARGATE"
  platform_version = "LATEST"
  propagate_tags   = "SERVICE"

  # Exactly one scaler at a time: a second one would see the first one's replicas as strays
  # and stop them. On SIGTERM the old task finishes its calls (30 s grace) and stops its
  # replicas; only then does the new one start.
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  health_check_grace_period_seconds = 60

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.scaler.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.scaler.arn
    container_name   = "scaler"
    container_port   = local.scaler_port
  }

  tags = var.tags

  # The scaler's RunTask calls name the capacity provider, which must be the cluster's by then;
  # on destroy, the scaler goes first and stops its replicas before the capacity goes.
  depends_on = [
    aws_lb_listener.pool,
    aws_iam_role_policy.scaler,
    aws_ecs_cluster_capacity_providers.pool,
  ]
}

# ---- Internal load balancer --------------------------------------------------------------------

resource "aws_lb" "pool" {
  #checkov:skip=CKV2_AWS_20:Internal HTTP only, reachable from the functions' security group; no HTTPS listener to redirect to.
  name                       = "${var.name}-pool"
  internal                   = true
  load_balancer_type         = "application"
  subnets                    = var.subnet_ids
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = var.deletion_protection
  # A call may wait in the scaler's queue while a GPU instance boots, then stream for minutes;
  # the load balancer must not cut an idle-looking connection before the gateway's own timeout.
  idle_timeout = var.idle_timeout_seconds

  dynamic "access_logs" {
    for_each = var.access_logs_bucket == null ? [] : [var.access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = "${var.name}-pool"
      enabled = true
    }
  }

  tags = var.tags
}

resource "aws_lb_target_group" "scaler" {
  #checkov:skip=CKV_AWS_378:Plain HTTP inside the VPC between the load balancer and the scaler.
  name        = "${var.name}-scaler"
  port        = local.scaler_port
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = var.vpc_id
  # Long enough for in-flight streams to finish when the scaler task is replaced.
  deregistration_delay = var.deregistration_delay_seconds

  health_check {
    path                = "/pool"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = var.tags
}

resource "aws_lb_listener" "pool" {
  #checkov:skip=CKV_AWS_2:Internal listener, reachable only from the functions' security group; TLS would need a private CA.
  #checkov:skip=CKV_AWS_103:No TLS on this internal listener (see CKV_AWS_2).
  load_balancer_arn = aws_lb.pool.arn
  port              = var.listener_port
  protocol          = "HTTP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.scaler.arn
  }

  tags = var.tags
}
