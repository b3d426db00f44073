"""Network: a VPC with public subnets only, so an idle deployment pays for no NAT gateway.

Instances get public addresses for egress (ECR, S3, SSM, CloudWatch) but their security group admits
only the load balancer; S3 traffic stays on a free gateway endpoint. Flow logs record all traffic.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.config import EnvConfig

_RETENTION_NAMES = {1: "ONE_DAY", 3: "THREE_DAYS", 5: "FIVE_DAYS", 7: "ONE_WEEK", 14: "TWO_WEEKS", 30: "ONE_MONTH",
                    60: "TWO_MONTHS", 90: "THREE_MONTHS", 120: "FOUR_MONTHS", 150: "FIVE_MONTHS", 180: "SIX_MONTHS",
                    365: "ONE_YEAR", 400: "THIRTEEN_MONTHS", 545: "EIGHTEEN_MONTHS", 731: "TWO_YEARS",
                    1096: "THREE_YEARS", 1827: "FIVE_YEARS", 3653: "TEN_YEARS"}


def retention(days: int) -> logs.RetentionDays:
    """The RetentionDays member for a number of days (the values infra.config accepts)."""
    return logs.RetentionDays[_RETENTION_NAMES[days]]


class NetworkStack(Stack):
    def __init__(self, scope: Construct, cid: str, *, cfg: EnvConfig, **kwargs) -> None:
        super().__init__(scope, cid, **kwargs)
        flow_log_group = logs.LogGroup(self, "FlowLogs", retention=retention(cfg.logRetentionDays),
                                       removal_policy=RemovalPolicy.DESTROY)
        self.vpc = ec2.Vpc(
            self, "Vpc", max_azs=2, nat_gateways=0,
            subnet_configuration=[ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC,
                                                          cidr_mask=24)],
            gateway_endpoints={"S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)},
            flow_logs={"all": ec2.FlowLogOptions(
                destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
                traffic_type=ec2.FlowLogTrafficType.ALL)},
        )
