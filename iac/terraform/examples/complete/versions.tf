terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # The functions module needs 6.29 or later (invoked_via_function_url).
      version = "~> 6.29"
    }
  }
}

# Tags are passed to each module rather than set as default_tags: Auto Scaling groups and
# launch templates do not take default_tags, and the modules tag everything themselves.
provider "aws" {
  region = var.region
}
