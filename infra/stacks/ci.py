"""CI: GitHub Actions reach AWS with OIDC, never with stored keys.

One deploy role per environment, assumable only by workflows of the configured repository that run
in the GitHub environment of the same name (`environment: dev` in the workflow). It may assume the CDK
bootstrap roles (which do the deploying), push the two images, read this app's stack outputs and
start/follow training executions. The OIDC provider exists once per account: the first environment
creates it (`createOidcProvider: true`), the others import it.
"""

from __future__ import annotations

from aws_cdk import Aws, CfnOutput, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.config import EnvConfig
from infra.stacks.storage import StorageRefs

GITHUB_OIDC_HOST = "token.actions.githubusercontent.com"
CDK_BOOTSTRAP_QUALIFIER = "hnb659fds"


class CiStack(Stack):
    def __init__(self, scope: Construct, cid: str, *, cfg: EnvConfig, 
**kwargs) -> None:
        super().__init__(scope, cid, **kwargs)
        storage = StorageRefs(self, cfg)
        if cfg.createOidcProvider:
            provider = iam.OidcProviderNative(self, "GithubOidc", url=f"https://{GITHUB_OIDC_HOST}",
                                              client_ids=["sts.amazonaws.com"])
        else:
            provider = iam.OidcProviderNative.from_oidc_provider_arn(
                self, "GithubOidc",
                f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:oidc-provider/{GITHUB_OIDC_HOST}")
        self.deploy_role = iam.Role(
            self, "DeployRole", role_name=f"attngan-{cfg.name}-github-deploy",
            description=f"GitHub Actions of {cfg.githubRepo} in environment {cfg.name}",
            assumed_by=iam.WebIdentityPrincipal(provider.oidc_provider_arn, conditions={
                "StringEquals": {
                    f"{GITHUB_OIDC_HOST}:aud": "sts.amazonaws.com",
                    f"{GITHUB_OIDC_HOST}:sub": f"repo:{cfg.githubRepo}:environment:{cfg.name}",
                }}))
        self.deploy_role.add_to_policy(iam.PolicyStatement(
            sid="AssumeCdkBootstrapRoles", actions=["sts:AssumeRole", "sts:TagSession"],
            resources=[f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:role/cdk-{CDK_BOOTSTRAP_QUALIFIER}-*"]))
        storage.service_repo.grant_pull_push(self.deploy_role)
        storage.trainer_repo.grant_pull_push(self.deploy_role)
        self.deploy_role.add_to_policy(iam.PolicyStatement(
            sid="ReadStackOutputs", actions=["cloudformation:DescribeStacks"],
            resources=[f"arn:{Aws.PARTITION}:cloudformation:{Aws.REGION}:{Aws.ACCOUNT_ID}:stack/{cfg.stack_name('')}*/*"]))
        self.deploy_role.add_to_policy(iam.PolicyStatement(
            sid="StartTraining", actions=["states:StartExecution"],
            resources=[f"arn:{Aws.PARTITION}:states:{Aws.REGION}:{Aws.ACCOUNT_ID}:stateMachine:{cfg.state_machine_name}"]))
        self.deploy_role.add_to_policy(iam.PolicyStatement(
            sid="FollowTraining", actions=["states:DescribeExecution"],
            resources=[f"arn:{Aws.PARTITION}:states:{Aws.REGION}:{Aws.ACCOUNT_ID}:execution:{cfg.state_machine_name}:*"]))
        CfnOutput(self, "DeployRoleArn", value=self.deploy_role.role_arn,
                  description="set as the GitHub environment variable AWS_DEPLOY_ROLE_ARN")
