"""One CDK stack per concern: storage (ECR + S3), network, service, training, CI."""
