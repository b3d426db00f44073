"""Registry and storage: the stateful part (kept on `cdk destroy`).

Every resource here has a name derived from the configuration, and the other stacks import them by
that name (`StorageRefs`): no CloudFormation exports, so stacks update and delete independently.

ECR repositories for the service and trainer images (scan on push, immutable tags, keep the last 30),
one S3 bucket with the prefixes `data/` (training sets), `models/` (training output), `images/`
(generated pictures, expired by lifecycle) and `checkpoints/` (spot training), plus an access-log
bucket, and the SSM parameter that names the model the service loads.
"""

from __future__ import annotations

from aws_cdk import CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_ssm as ssm
from aws_cdk.region_info import RegionInfo
from constructs import Construct

from infra.config import EnvConfig

# The value the parameter holds until the first promotion: the service then serves the model baked into its image.
BUNDLED_MODEL = "bundled"
ALB_LOG_PREFIX = "alb"
DATA_PREFIX, MODELS_PREFIX, IMAGES_PREFIX, CHECKPOINTS_PREFIX = "data/", "models/", "images/", "checkpoints/"


class StorageStack(Stack):
    def __init__(self, scope: Construct, cid: str, *, cfg: EnvConfig, **kwargs) -> None:
        super().__init__(scope, cid, **kwargs)
        keep = [ecr.LifecycleRule(description="keep the 30 newest images", max_image_count=30)]
        self.service_repo = ecr.Repository(
            self, "ServiceRepo", repository_name=cfg.service_repo_name, image_scan_on_push=True,
            image_tag_mutability=ecr.TagMutability.IMMUTABLE, lifecycle_rules=keep,
            removal_policy=RemovalPolicy.RETAIN)
        self.trainer_repo = ecr.Repository(
            self, "TrainerRepo", repository_name=cfg.trainer_repo_name, image_scan_on_push=True,
            image_tag_mutability=ecr.TagMutability.IMMUTABLE, lifecycle_rules=keep,
            removal_policy=RemovalPolicy.RETAIN)

        self.log_bucket = s3.Bucket(
            self, "AccessLogs", bucket_name=cfg.log_bucket_name, encryption=s3.BucketEncryption.S3_MANAGED,  # ALB logs need SSE-S3
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL, enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(90))],
            removal_policy=RemovalPolicy.RETAIN)
        self.bucket = s3.Bucket(
            self, "Artifacts", bucket_name=cfg.bucket_name, encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL, enforce_ssl=True, versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.log_bucket, server_access_logs_prefix="s3/",
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-generated-images", prefix=IMAGES_PREFIX,
                                 expiration=Duration.days(cfg.imagesExpireDays),
                                 noncurrent_version_expiration=Duration.days(1)),
                s3.LifecycleRule(id="expire-spot-checkpoints", prefix=CHECKPOINTS_PREFIX,
                                 expiration=Duration.days(30), noncurrent_version_expiration=Duration.days(1)),
                s3.LifecycleRule(id="tidy", abort_incomplete_multipart_upload_after=Duration.days(7),
                                 noncurrent_version_expiration=Duration.days(30)),
            ],
            removal_policy=RemovalPolicy.RETAIN)

        # ALB access logs (the service stack enables them on its load balancer, importing this bucket by name).
        elb_account = RegionInfo.get(cfg.region).elbv2_account
        self.log_bucket.add_to_resource_policy(iam.PolicyStatement(
            sid="AlbAccessLogs", actions=["s3:PutObject"],
            principals=[iam.AccountPrincipal(elb_account) if elb_account
                        else iam.ServicePrincipal("logdelivery.elasticloadbalancing.amazonaws.com")],
            resources=[self.log_bucket.arn_for_objects(f"{ALB_LOG_PREFIX}/AWSLogs/{cfg.account}/*")]))
        self.model_parameter = ssm.StringParameter(
            self, "ModelUri", parameter_name=cfg.model_parameter_name, string_value=BUNDLED_MODEL,
            description="s3:// URI of the model the service loads at start (model.tar.gz or bundle prefix); "
                        f"'{BUNDLED_MODEL}' = the model in the image. Set by training or `attngan cloud promote`.")

        CfnOutput(self, "BucketName", value=self.bucket.bucket_name)
        CfnOutput(self, "ServiceRepoUri", value=self.service_repo.repository_uri)
        CfnOutput(self, "TrainerRepoUri", value=self.trainer_repo.repository_uri)
        CfnOutput(self, "ModelParameterName", value=self.model_parameter.parameter_name)


class StorageRefs:
    """The storage stack's resources imported by name into another stack (`StorageRefs(self, cfg)`)."""

    def __init__(self, scope: Construct, cfg: EnvConfig) -> None:
        stack = Stack.of(scope)
        self.bucket_name = cfg.bucket_name
        self.bucket_arn = f"arn:{stack.partition}:s3:::{cfg.bucket_name}"
        self.log_bucket = s3.Bucket.from_bucket_name(scope, "LogBucketRef", cfg.log_bucket_name)
        self.service_repo = ecr.Repository.from_repository_name(scope, "ServiceRepoRef", cfg.service_repo_name)
        self.trainer_repo = ecr.Repository.from_repository_name(scope, "TrainerRepoRef", cfg.trainer_repo_name)
        self.model_parameter = ssm.StringParameter.from_string_parameter_name(
            scope, "ModelUriRef", cfg.model_parameter_name)
