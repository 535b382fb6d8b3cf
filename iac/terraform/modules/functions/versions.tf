terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.29 added `invoked_via_function_url` to aws_lambda_permission, which public function
      # URLs need (see main.tf).
      version = ">= 6.29.0, < 7.0.0"
    }
  }
}
