"""Service: the HTTP API on ECS, on GPU (or CPU) EC2 instances, behind an HTTPS endpoint.

    client --HTTPS--> [ALB :443 + ACM cert]                 (domain configured)
    client --HTTPS--> [CloudFront] --HTTP--> [ALB :80]      (no domain: *.cloudfront.net certificate)
                          ALB (WAF) --> ECS service (bridge network, dynamic host ports) on an ASG
                          capacity provider; one task per GPU instance.

Without a domain the ALB admits only CloudFront's origin-facing addresses (managed prefix list) and
only requests carrying the distribution's secret origin header; anything else gets 403.
Instances sit in public subnets (no NAT gateway to pay for while idle); their security group admits
only the ALB on the ephemeral port range, IMDSv2 is required with hop limit 1 (containers cannot
reach the instance's credentials), and the root volume is encrypted.
"""

from __future__ import annotations

from aws_cdk import Aws, CfnOutput, Duration, Fn, RemovalPolicy, Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_route53 as route53
from aws_cdk import aws_route53_targets as r53_targets
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from infra.config import EnvConfig
from infra.stacks.network import retention
from infra.stacks.storage import IMAGES_PREFIX, MODELS_PREFIX, StorageRefs

CONTAINER_NAME = "api"
CONTAINER_PORT = 8080
READINESS_PATH = "/readyz"
LIVENESS_PATH = "/healthz"
ORIGIN_HEADER = "X-Origin-Verify"
# ECS allows at most 300 s of container health-check start period; the ALB grace period covers the rest.
MAX_START_PERIOD_S = 300


class ServiceStack(Stack):
    def __init__(self, scope: Construct, cid: str, *, cfg: EnvConfig, vpc: ec2.IVpc, 
                 **kwargs) -> None:
        super().__init__(scope, cid, **kwargs)
        storage = StorageRefs(self, cfg)
        self.add_stack_dependency(Stack.of(vpc))
        self.cfg = cfg
        self.cluster = ecs.Cluster(self, "Cluster", vpc=vpc, cluster_name=cfg.cluster_name, container_insights_v2=ecs.ContainerInsights.ENABLED)

        # --- capacity: an auto scaling group of GPU (or CPU) instances, managed by ECS ---------------------
        hardware = ecs.AmiHardwareType.GPU if cfg.gpu else ecs.AmiHardwareType.STANDARD
        instance_sg = ec2.SecurityGroup(self, "InstanceSg", vpc=vpc, allow_all_outbound=True,
                                        description="ECS instances: inbound only from the ALB (rules added below)")
        instance_role = iam.Role(self, "InstanceRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
        launch_template = ec2.LaunchTemplate(
            self, "LaunchTemplate",
            instance_type=ec2.InstanceType(cfg.instance_type),
            # Pinned: the AMI id is cached in cdk.context.json, so a deploy never swaps drivers by surprise.
            machine_image=ecs.EcsOptimizedImage.amazon_linux2023(hardware, cached_in_context=True),
            user_data=ec2.UserData.for_linux(),
            role=instance_role,
            security_group=instance_sg,
            associate_public_ip_address=True,
            require_imdsv2=True,
            http_put_response_hop_limit=1,
            block_devices=[ec2.BlockDevice(device_name="/dev/xvda", volume=ec2.BlockDeviceVolume.ebs(
                cfg.rootVolumeGiB, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3,
                delete_on_termination=True))],
        )
        self.alarm_topic = sns.Topic(self, "Alarms", display_name=f"attngan {cfg.name} alarms", enforce_ssl=True)
        if cfg.alarmEmail:
            self.alarm_topic.add_subscription(subs.EmailSubscription(cfg.alarmEmail))
        asg = autoscaling.AutoScalingGroup(
            self, "Asg", vpc=vpc, notifications=[autoscaling.NotificationConfiguration(topic=self.alarm_topic)], vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
            launch_template=launch_template, min_capacity=cfg.asgMin, max_capacity=cfg.asgMax,
            new_instances_protected_from_scale_in=False,
        )
        capacity = ecs.AsgCapacityProvider(
            self, "Capacity", auto_scaling_group=asg, enable_managed_scaling=True,
            enable_managed_termination_protection=False,  # else stack deletion hangs (aws-cdk#18179)
            enable_managed_draining=True, target_capacity_percent=100,
            instance_warmup_period=300,
        )
        self.cluster.add_asg_capacity_provider(capacity)

        # --- task: one container, one GPU, model URI resolved from SSM at each task start ------------------
        task = ecs.Ec2TaskDefinition(self, "Task", network_mode=ecs.NetworkMode.BRIDGE)
        bucket_arn = f"arn:{Aws.PARTITION}:s3:::{storage.bucket_name}"
        task.add_to_task_role_policy(iam.PolicyStatement(  # models in, pictures out (+ presigned GETs)
            actions=["s3:GetObject"], resources=[f"{bucket_arn}/{MODELS_PREFIX}*", f"{bucket_arn}/{IMAGES_PREFIX}*"]))
        task.add_to_task_role_policy(iam.PolicyStatement(
            actions=["s3:PutObject"], resources=[f"{bucket_arn}/{IMAGES_PREFIX}*"]))
        task.add_to_task_role_policy(iam.PolicyStatement(
            actions=["s3:ListBucket"], resources=[bucket_arn],
            conditions={"StringLike": {"s3:prefix": [f"{MODELS_PREFIX}*", f"{IMAGES_PREFIX}*"]}}))
        log_group = logs.LogGroup(self, "Logs", retention=retention(cfg.logRetentionDays),
                                  removal_policy=RemovalPolicy.DESTROY)
        probe = (f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{CONTAINER_PORT}"
                 f"{LIVENESS_PATH}', timeout=4)")
        container = task.add_container(
            CONTAINER_NAME,
            image=ecs.ContainerImage.from_ecr_repository(storage.service_repo, cfg.imageTag),
            cpu=cfg.taskCpu, memory_reservation_mib=cfg.taskMemoryMiB,
            gpu_count=1 if cfg.gpu else None,
            environment={
                "BUCKET_NAME": storage.bucket_name,
                "S3_PREFIX": IMAGES_PREFIX,
                "IMAGE_PREFIX": IMAGES_PREFIX,
                "AWS_REGION": Aws.REGION,
                "DEVICE": "cuda" if cfg.gpu else "cpu",
                "CANDIDATES": str(cfg.candidates),
                "TRUNCATION": str(cfg.truncation),
            },
            secrets={"MODEL_URI": ecs.Secret.from_ssm_parameter(storage.model_parameter)},
            logging=ecs.LogDrivers.aws_logs(stream_prefix="api", log_group=log_group),
            health_check=ecs.HealthCheck(
                command=["CMD", "python", "-c", probe], interval=Duration.seconds(30),
                timeout=Duration.seconds(5), retries=3,
                start_period=Duration.seconds(min(cfg.healthCheckGraceSeconds, MAX_START_PERIOD_S))),
            stop_timeout=Duration.seconds(30),
        )
        container.add_port_mappings(ecs.PortMapping(container_port=CONTAINER_PORT, host_port=0))

        self.service = ecs.Ec2Service(
            self, "Service", cluster=self.cluster, task_definition=task, service_name=cfg.service_name, desired_count=cfg.serviceMin,
            capacity_provider_strategies=[ecs.CapacityProviderStrategy(
                capacity_provider=capacity.capacity_provider_name, weight=1)],
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            # Start the new task (on a spare instance) before stopping the old one: no downtime.
            min_healthy_percent=100, max_healthy_percent=200,
            health_check_grace_period=Duration.seconds(cfg.healthCheckGraceSeconds),
        )
        # Create after / delete before the cluster's capacity provider association (containers-roadmap#631).
        self.service.node.add_dependency(self.cluster)

        # --- load balancer --------------------------------------------------------------------------------
        alb_sg = ec2.SecurityGroup(self, "AlbSg", vpc=vpc, allow_all_outbound=False,
                                   description="ALB: HTTPS from anywhere, or HTTP from CloudFront only")
        self.alb = elbv2.ApplicationLoadBalancer(
            self, "Alb", vpc=vpc, internet_facing=True, security_group=alb_sg,
            idle_timeout=Duration.seconds(120), drop_invalid_header_fields=True)
        self.alb.log_access_logs(storage.log_bucket, "alb")
        target_group = elbv2.ApplicationTargetGroup(
            self, "Targets", vpc=vpc, port=CONTAINER_PORT, protocol=elbv2.ApplicationProtocol.HTTP,
            target_type=elbv2.TargetType.INSTANCE,
            targets=[self.service.load_balancer_target(container_name=CONTAINER_NAME,
                                                       container_port=CONTAINER_PORT)],
            deregistration_delay=Duration.seconds(30),
            health_check=elbv2.HealthCheck(path=READINESS_PATH, port="traffic-port", healthy_http_codes="200",
                                           interval=Duration.seconds(30), timeout=Duration.seconds(10),
                                           healthy_threshold_count=2, unhealthy_threshold_count=5))
        self.target_group = target_group

        if cfg.has_domain:
            zone = route53.HostedZone.from_hosted_zone_attributes(
                self, "Zone", hosted_zone_id=cfg.hostedZoneId, zone_name=cfg.hostedZoneName)
            cert = acm.Certificate(self, "Certificate", domain_name=cfg.domainName,
                                   validation=acm.CertificateValidation.from_dns(zone))
            listener = self.alb.add_listener(
                "Https", port=443, protocol=elbv2.ApplicationProtocol.HTTPS, certificates=[cert],
                ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS, open=True, default_target_groups=[target_group])
            self.alb.add_redirect(source_port=80, target_port=443)
            route53.ARecord(self, "Alias", zone=zone, record_name=cfg.domainName,
                            target=route53.RecordTarget.from_alias(r53_targets.LoadBalancerTarget(self.alb)))
            self.url = f"https://{cfg.domainName}"
            self.distribution = None
        else:
            # The stack id's UUID: unguessable from outside, stable across updates, and not in any file.
            origin_secret = Fn.select(2, Fn.split("/", Aws.STACK_ID))
            alb_sg.add_ingress_rule(ec2.Peer.prefix_list(cfg.prefix_list_id), ec2.Port.tcp(80),
                                    "HTTP from CloudFront origin-facing addresses only")
            listener = self.alb.add_listener(
                "Http", port=80, protocol=elbv2.ApplicationProtocol.HTTP, open=False,
                default_action=elbv2.ListenerAction.fixed_response(
                    403, content_type="application/json",
                    message_body='{"error": "use the CloudFront HTTPS endpoint"}'))
            listener.add_action("FromCloudFront", priority=10,
                                conditions=[elbv2.ListenerCondition.http_header(ORIGIN_HEADER, [origin_secret])],
                                action=elbv2.ListenerAction.forward([target_group]))
            self.distribution = cloudfront.Distribution(
                self, "Cdn", comment=f"attngan {cfg.name}: HTTPS in front of the ALB",
                price_class=cloudfront.PriceClass.PRICE_CLASS_100,
                default_behavior=cloudfront.BehaviorOptions(
                    origin=origins.LoadBalancerV2Origin(
                        self.alb, protocol_policy=cloudfront.OriginProtocolPolicy.HTTP_ONLY, http_port=80,
                        read_timeout=Duration.seconds(60), custom_headers={ORIGIN_HEADER: origin_secret}),
                    viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                    allowed_methods=cloudfront.AllowedMethods.ALLOW_ALL,
                    cache_policy=cloudfront.CachePolicy.CACHING_DISABLED,
                    origin_request_policy=cloudfront.OriginRequestPolicy.ALL_VIEWER_EXCEPT_HOST_HEADER))
            self.url = f"https://{self.distribution.distribution_domain_name}"
        self.listener = listener

        # --- autoscaling on requests per target -------------------------------------------------------
        scaling = self.service.auto_scale_task_count(min_capacity=cfg.serviceMin, max_capacity=cfg.serviceMax)
        scaling.scale_on_request_count(
            "RequestsPerTarget", requests_per_target=cfg.requestsPerTarget, target_group=target_group,
            scale_in_cooldown=Duration.minutes(10), scale_out_cooldown=Duration.minutes(2))

        self._waf(cfg)
        self._alarms_and_dashboard(cfg, target_group)

        CfnOutput(self, "ServiceUrl", value=self.url, description="HTTPS endpoint: POST /api/v1.0/bird")
        CfnOutput(self, "ClusterName", value=self.cluster.cluster_name)
        CfnOutput(self, "ServiceName", value=self.service.service_name)
        CfnOutput(self, "LoadBalancerDns", value=self.alb.load_balancer_dns_name)

    def _waf(self, cfg: EnvConfig) -> None:
        """Rate-limit each client; behind CloudFront the client is the first X-Forwarded-For address."""
        if cfg.has_domain:
            rate = wafv2.CfnWebACL.RateBasedStatementProperty(limit=cfg.wafRequestsPer5Min, aggregate_key_type="IP")
        else:
            rate = wafv2.CfnWebACL.RateBasedStatementProperty(
                limit=cfg.wafRequestsPer5Min, aggregate_key_type="FORWARDED_IP",
                forwarded_ip_config=wafv2.CfnWebACL.ForwardedIPConfigurationProperty(
                    header_name="X-Forwarded-For", fallback_behavior="MATCH"))

        def visibility(name: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
            return wafv2.CfnWebACL.VisibilityConfigProperty(
                cloud_watch_metrics_enabled=True, metric_name=name, sampled_requests_enabled=True)

        self.web_acl = wafv2.CfnWebACL(
            self, "WebAcl", scope="REGIONAL", default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            visibility_config=visibility(f"attngan-{cfg.name}-acl"),
            rules=[
                wafv2.CfnWebACL.RuleProperty(
                    name="rate-limit-per-client", priority=0, action=wafv2.CfnWebACL.RuleActionProperty(block={}),
                    statement=wafv2.CfnWebACL.StatementProperty(rate_based_statement=rate),
                    visibility_config=visibility("rate-limit")),
                wafv2.CfnWebACL.RuleProperty(
                    name="aws-known-bad-inputs", priority=1,
                    override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
                    statement=wafv2.CfnWebACL.StatementProperty(
                        managed_rule_group_statement=wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(
                            vendor_name="AWS", name="AWSManagedRulesKnownBadInputsRuleSet")),
                    visibility_config=visibility("known-bad-inputs")),
            ])
        wafv2.CfnWebACLAssociation(self, "WebAclOnAlb", resource_arn=self.alb.load_balancer_arn,
                                   web_acl_arn=self.web_acl.attr_arn)

    def _alarms_and_dashboard(self, cfg: EnvConfig, tg: elbv2.ApplicationTargetGroup) -> None:
        five = Duration.minutes(5)
        server_errors = cw.MathExpression(
            expression="FILL(elb, 0) + FILL(target, 0)", period=five, label="5xx (ALB + targets)",
            using_metrics={
                "elb": self.alb.metrics.http_code_elb(elbv2.HttpCodeElb.ELB_5XX_COUNT, period=five),
                "target": tg.metrics.http_code_target(elbv2.HttpCodeTarget.TARGET_5XX_COUNT, period=five)})
        latency = tg.metrics.target_response_time(statistic="p95", period=five)
        unhealthy = tg.metrics.unhealthy_host_count(statistic="Maximum", period=Duration.minutes(1))
        requests = tg.metrics.request_count(period=five)
        healthy = tg.metrics.healthy_host_count(statistic="Minimum", period=Duration.minutes(1))
        alarms = [
            server_errors.create_alarm(
                self, "ServerErrors", alarm_description="5xx responses from the ALB or the service",
                threshold=10, evaluation_periods=1,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING),
            latency.create_alarm(
                self, "Latency", alarm_description="p95 target response time above 5 s", threshold=5,
                evaluation_periods=3, comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING),
            unhealthy.create_alarm(
                self, "UnhealthyHosts", alarm_description="targets failing /readyz", threshold=1,
                evaluation_periods=5, datapoints_to_alarm=3,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING),
        ]
        for alarm in alarms:
            alarm.add_alarm_action(cw_actions.SnsAction(self.alarm_topic))
        self.alarms = alarms
        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=f"attngan-{cfg.name}")
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Requests", left=[requests], width=8),
            cw.GraphWidget(title="5xx", left=[server_errors], width=8),
            cw.GraphWidget(title="Latency p95 (s)", left=[latency],
                           left_annotations=[cw.HorizontalAnnotation(value=5, label="alarm")], width=8),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Healthy / unhealthy targets", left=[healthy], right=[unhealthy], width=12),
            cw.AlarmStatusWidget(title="Alarms", alarms=alarms, width=12),
        )
