"""Training: a Step Functions state machine that trains on SageMaker and promotes the result.

    start (input: jobName, hyperparameters, dataPrefix, promote)
      -> SageMaker training job, trainer image, channel "train" = s3://bucket/<dataPrefix>,
         output s3://bucket/models/<jobName>/output/model.tar.gz, managed spot with checkpoints in
         s3://bucket/checkpoints/<jobName>/ (SageMaker restores /opt/ml/checkpoints after an interruption)
      -> promote?  yes: SSM model-uri parameter := the artifact, then ECS force-new-deployment
                         (new tasks resolve MODEL_URI from the parameter at start)
                   no:  done (promote later with `attngan cloud promote`)
Job names must start with `attngan-<env>-` (the cloud command makes unique ones); the IAM policies
are scoped to that prefix.
"""

from __future__ import annotations

from aws_cdk import Aws, CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from infra.config import EnvConfig
from infra.stacks.network import retention
from infra.stacks.storage import CHECKPOINTS_PREFIX, DATA_PREFIX, MODELS_PREFIX, StorageRefs

CHECKPOINT_DIR = "/opt/ml/checkpoints"
SAGEMAKER_EVENTS_RULE = "StepFunctionsGetEventsForSageMakerTrainingJobsRule"


class TrainingStack(Stack):
    def __init__(self, scope: Construct, cid: str, *, cfg: EnvConfig, 
                 **kwargs) -> None:
        super().__init__(scope, cid, **kwargs)
        storage = StorageRefs(self, cfg)
        self.job_prefix = cfg.job_prefix
        jobs_arn = f"arn:{Aws.PARTITION}:sagemaker:{Aws.REGION}:{Aws.ACCOUNT_ID}:training-job/{self.job_prefix}*"

        # --- the role the training job runs as ----------------------------------------------------
        self.sagemaker_role = iam.Role(self, "SageMakerRole",
                                       assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
                                       description="attngan training jobs: read data/, write models/ and checkpoints/")
        bucket_arn = f"arn:{Aws.PARTITION}:s3:::{storage.bucket_name}"
        ckpt = f"{bucket_arn}/{CHECKPOINTS_PREFIX}*"
        for actions, resources in (
            (["s3:GetObject"], [f"{bucket_arn}/{DATA_PREFIX}*", ckpt]),
            (["s3:PutObject", "s3:AbortMultipartUpload"], [f"{bucket_arn}/{MODELS_PREFIX}*", ckpt]),
            (["s3:DeleteObject"], [ckpt]),  # checkpoint sync mirrors deletions
        ):
            self.sagemaker_role.add_to_policy(iam.PolicyStatement(actions=actions, resources=resources))
        self.sagemaker_role.add_to_policy(iam.PolicyStatement(
            actions=["s3:ListBucket"], resources=[bucket_arn],
            conditions={"StringLike": {"s3:prefix": [f"{DATA_PREFIX}*", f"{CHECKPOINTS_PREFIX}*"]}}))
        storage.trainer_repo.grant_pull(self.sagemaker_role)
        self.sagemaker_role.add_to_policy(iam.PolicyStatement(
            actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            resources=[f"arn:{Aws.PARTITION}:logs:{Aws.REGION}:{Aws.ACCOUNT_ID}:log-group:/aws/sagemaker/TrainingJobs*"]))
        self.sagemaker_role.add_to_policy(iam.PolicyStatement(
            actions=["cloudwatch:PutMetricData"], resources=["*"],
            conditions={"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}))

        # --- the state machine --------------------------------------------------------------------
        max_runtime = cfg.trainingMaxHours * 3600
        s3 = f"s3://{storage.bucket_name}"
        job_parameters = {
            "TrainingJobName.$": "$.jobName",
            "RoleArn": self.sagemaker_role.role_arn,
            "AlgorithmSpecification": {
                "TrainingImage": storage.trainer_repo.repository_uri_for_tag(cfg.imageTag),
                "TrainingInputMode": "File",
            },
            "HyperParameters.$": "$.hyperparameters",  # a map of strings (SageMaker's rule)
            "InputDataConfig": [{
                "ChannelName": "train",
                "DataSource": {"S3DataSource": {
                    "S3DataType": "S3Prefix", "S3DataDistributionType": "FullyReplicated",
                    "S3Uri.$": f"States.Format('{s3}/{{}}', $.dataPrefix)"}},
            }],
            "OutputDataConfig": {"S3OutputPath": f"{s3}/{MODELS_PREFIX}"},
            "ResourceConfig": {"InstanceCount": 1, "InstanceType": cfg.trainingInstanceType,
                               "VolumeSizeInGB": cfg.trainingVolumeGiB},
            "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime,
                                  **({"MaxWaitTimeInSeconds": 2 * max_runtime} if cfg.trainingSpot else {})},
            "EnableManagedSpotTraining": cfg.trainingSpot,
            "CheckpointConfig": {"S3Uri.$": f"States.Format('{s3}/{CHECKPOINTS_PREFIX}{{}}/', $.jobName)",
                                 "LocalPath": CHECKPOINT_DIR},
            "Tags": [{"Key": "project", "Value": "attngan"}, {"Key": "env", "Value": cfg.name}],
        }
        train = sfn.CustomState(self, "Train", state_json={
            "Type": "Task",
            "Resource": f"arn:{Aws.PARTITION}:states:::sagemaker:createTrainingJob.sync",
            "Parameters": job_parameters,
            "ResultSelector": {"modelUri.$": "$.ModelArtifacts.S3ModelArtifacts",
                               "status.$": "$.TrainingJobStatus",
                               "billableSeconds.$": "$.BillableTimeInSeconds"},
            "ResultPath": "$.training",
        })
        record = tasks.CallAwsService(
            self, "RecordModelUri", service="ssm", action="putParameter",
            parameters={"Name": cfg.model_parameter_name, "Type": "String", "Overwrite": True,
                        "Value": sfn.JsonPath.string_at("$.training.modelUri")},
            iam_resources=[f"arn:{Aws.PARTITION}:ssm:{Aws.REGION}:{Aws.ACCOUNT_ID}:parameter{cfg.model_parameter_name}"], result_path=sfn.JsonPath.DISCARD)
        rollout = tasks.CallAwsService(
            self, "RollOutService", service="ecs", action="updateService",
            parameters={"Cluster": cfg.cluster_name, "Service": cfg.service_name, "ForceNewDeployment": True},
            iam_resources=[f"arn:{Aws.PARTITION}:ecs:{Aws.REGION}:{Aws.ACCOUNT_ID}:service/{cfg.cluster_name}/{cfg.service_name}"],
            result_path=sfn.JsonPath.DISCARD)
        done = sfn.Succeed(self, "Done")
        definition = train.next(
            sfn.Choice(self, "Promote?")
            .when(sfn.Condition.boolean_equals("$.promote", True), record.next(rollout).next(done))
            .otherwise(done))
        log_group = logs.LogGroup(self, "Logs", retention=retention(cfg.logRetentionDays),
                                  removal_policy=RemovalPolicy.DESTROY)
        self.state_machine = sfn.StateMachine(
            self, "StateMachine", state_machine_name=cfg.state_machine_name,
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            timeout=Duration.seconds(3 * max_runtime + 3600), tracing_enabled=True,
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=True))

        # CustomState brings no policy of its own: grant exactly what createTrainingJob.sync needs.
        role = self.state_machine.role
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob",
                     "sagemaker:AddTags", "sagemaker:ListTags"], resources=[jobs_arn]))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["iam:PassRole"], resources=[self.sagemaker_role.role_arn],
            conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
            resources=[f"arn:{Aws.PARTITION}:events:{Aws.REGION}:{Aws.ACCOUNT_ID}:rule/{SAGEMAKER_EVENTS_RULE}"]))

        CfnOutput(self, "StateMachineArn", value=self.state_machine.state_machine_arn)
        CfnOutput(self, "JobPrefix", value=self.job_prefix)
