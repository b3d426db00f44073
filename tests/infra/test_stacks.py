"""Template assertions: every promise of the infrastructure, on the templates `cdk deploy` would use."""

from __future__ import annotations

import json

from aws_cdk.assertions import Match

from tests.infra.conftest import TAG, one, resources


def _definition(template: dict) -> str:
    """A state machine's definition with its CloudFormation joins flattened to text."""
    sm = one(template, "AWS::StepFunctions::StateMachine")["DefinitionString"]
    return "".join(p if isinstance(p, str) else json.dumps(p) for p in sm["Fn::Join"][1])


# --- storage -------------------------------------------------------------------------------------------

def test_ecr_repositories_scan_on_push_immutable_with_lifecycle(dev):
    repos = resources(dev.template("Storage"), "AWS::ECR::Repository")
    names = sorted(r["Properties"]["RepositoryName"] for r in repos.values())
    assert names == ["attngan-dev-service", "attngan-dev-trainer"]
    for r in repos.values():
        p = r["Properties"]
        assert p["ImageScanningConfiguration"] == {"ScanOnPush": True}
        assert p["ImageTagMutability"] == "IMMUTABLE"
        assert json.loads(p["LifecyclePolicy"]["LifecyclePolicyText"])["rules"][0]["selection"]["countNumber"] == 30
        assert r["DeletionPolicy"] == "Retain"


def test_bucket_encrypted_private_ssl_only_logged_and_images_expire(dev):
    t = dev.assertions("Storage")
    t.has_resource("AWS::S3::Bucket", {
        "DeletionPolicy": "Retain",
        "Properties": {
            "BucketName": "attngan-dev-123456789012-us-east-1",
            "BucketEncryption": {"ServerSideEncryptionConfiguration": [
                {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]},
            "PublicAccessBlockConfiguration": {"BlockPublicAcls": True, "BlockPublicPolicy": True,
                                               "IgnorePublicAcls": True, "RestrictPublicBuckets": True},
            "LoggingConfiguration": {"DestinationBucketName": Match.any_value(), "LogFilePrefix": "s3/"},
            "LifecycleConfiguration": {"Rules": Match.array_with([Match.object_like(
                {"Prefix": "images/", "ExpirationInDays": dev.cfg.imagesExpireDays, "Status": "Enabled"})])},
        }})
    policies = resources(dev.template("Storage"), "AWS::S3::BucketPolicy")
    assert len(policies) == 2  # both buckets deny plain HTTP
    for p in policies.values():
        deny = [s for s in p["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
        assert deny and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_model_uri_parameter_starts_with_the_bundled_model(dev):
    p = one(dev.template("Storage"), "AWS::SSM::Parameter")
    assert p["Name"] == "/attngan/dev/model-uri" and p["Value"] == "bundled" and p["Type"] == "String"


# --- network -------------------------------------------------------------------------------------------

def test_vpc_has_flow_logs_no_nat_and_an_s3_gateway_endpoint(dev):
    t = dev.template("Network")
    assert resources(t, "AWS::EC2::NatGateway") == {}
    assert one(t, "AWS::EC2::FlowLog")["TrafficType"] == "ALL"
    assert one(t, "AWS::EC2::VPCEndpoint")["VpcEndpointType"] == "Gateway"
    azs = {s["Properties"]["AvailabilityZone"] for s in resources(t, "AWS::EC2::Subnet").values()}
    assert azs == {"us-east-1a", "us-east-1b"}  # from the committed cdk.context.json, not dummies


# --- service -------------------------------------------------------------------------------------------

def test_gpu_instances_pinned_ami_imdsv2_encrypted_volumes(dev, cdk_context):
    lt = one(dev.template("Service"), "AWS::EC2::LaunchTemplate")["LaunchTemplateData"]
    assert lt["InstanceType"] == "g4dn.xlarge"
    key = ("ssm:account=123456789012:parameterName=/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/"
           "recommended/image_id:region=us-east-1")
    assert lt["ImageId"] == cdk_context[key]  # pinned in context, not resolved at deploy time
    assert lt["MetadataOptions"]["HttpTokens"] == "required"
    assert lt["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    ebs = lt["BlockDeviceMappings"][0]["Ebs"]
    assert ebs["Encrypted"] is True and ebs["VolumeType"] == "gp3"


def test_capacity_provider_managed_scaling_and_draining(dev):
    t = dev.template("Service")
    cp = one(t, "AWS::ECS::CapacityProvider")["AutoScalingGroupProvider"]
    assert cp["ManagedScaling"]["Status"] == "ENABLED" and cp["ManagedScaling"]["TargetCapacity"] == 100
    assert cp["ManagedDraining"] == "ENABLED"
    assert cp["ManagedTerminationProtection"] == "DISABLED"  # else stack deletion hangs
    asg = one(t, "AWS::AutoScaling::AutoScalingGroup")
    assert (asg["MinSize"], asg["MaxSize"]) == ("0", "2")
    assert asg["NotificationConfigurations"]


def test_task_has_one_gpu_model_uri_from_ssm_health_check_and_logs(dev):
    td = one(dev.template("Service"), "AWS::ECS::TaskDefinition")
    (c,) = td["ContainerDefinitions"]
    assert c["ResourceRequirements"] == [{"Type": "GPU", "Value": "1"}]
    assert c["PortMappings"] == [{"ContainerPort": 8080, "HostPort": 0, "Protocol": "tcp"}]
    assert c["HealthCheck"]["StartPeriod"] == 300 and "/healthz" in " ".join(c["HealthCheck"]["Command"])
    assert c["LogConfiguration"]["LogDriver"] == "awslogs"
    assert [s["Name"] for s in c["Secrets"]] == ["MODEL_URI"]
    env = {e["Name"]: e["Value"] for e in c["Environment"]}
    assert env["BUCKET_NAME"] == "attngan-dev-123456789012-us-east-1" and env["S3_PREFIX"] == "images/"
    assert TAG in json.dumps(c["Image"])
    assert td["NetworkMode"] == "bridge"


def test_service_rolls_back_on_failure_and_waits_for_model_load(dev):
    svc = one(dev.template("Service"), "AWS::ECS::Service")
    dc = svc["DeploymentConfiguration"]
    assert dc["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
    assert (dc["MinimumHealthyPercent"], dc["MaximumPercent"]) == (100, 200)
    assert svc["HealthCheckGracePeriodSeconds"] == 600
    assert svc["CapacityProviderStrategy"][0]["Weight"] == 1


def test_target_group_checks_readiness_and_scaling_is_on_requests_per_target(dev):
    t = dev.template("Service")
    tg = one(t, "AWS::ElasticLoadBalancingV2::TargetGroup")
    assert tg["HealthCheckPath"] == "/readyz" and tg["HealthCheckPort"] == "traffic-port"
    policy = one(t, "AWS::ApplicationAutoScaling::ScalingPolicy")["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PredefinedMetricSpecification"]["PredefinedMetricType"] == "ALBRequestCountPerTarget"
    assert policy["TargetValue"] == 20


def test_without_domain_cloudfront_gives_https_and_alb_admits_only_cloudfront(dev):
    t = dev.template("Service")
    dist = one(t, "AWS::CloudFront::Distribution")["DistributionConfig"]
    assert dist["DefaultCacheBehavior"]["ViewerProtocolPolicy"] == "redirect-to-https"
    header = dist["Origins"][0]["OriginCustomHeaders"][0]
    assert header["HeaderName"] == "X-Origin-Verify"
    (listener,) = resources(t, "AWS::ElasticLoadBalancingV2::Listener").values()
    assert listener["Properties"]["Port"] == 80
    assert listener["Properties"]["DefaultActions"][0]["FixedResponseConfig"]["StatusCode"] == "403"
    rule = one(t, "AWS::ElasticLoadBalancingV2::ListenerRule")
    cond = rule["Conditions"][0]["HttpHeaderConfig"]
    assert cond["HttpHeaderName"] == "X-Origin-Verify" and cond["Values"] == [header["HeaderValue"]]
    ingress = [r["Properties"] for r in resources(t, "AWS::EC2::SecurityGroupIngress").values()]
    sgs = [sg["Properties"] for sg in resources(t, "AWS::EC2::SecurityGroup").values()]
    inline = [r for sg in sgs for r in sg.get("SecurityGroupIngress", [])]
    alb_rules = [r for r in ingress + inline if r.get("FromPort") == 80]
    assert alb_rules and all(r.get("SourcePrefixListId") == "pl-3b927c52" for r in alb_rules)
    assert not [r for r in ingress + inline if r.get("CidrIp") == "0.0.0.0/0"]


def test_with_domain_acm_certificate_https_and_http_redirect(dev_domain):
    t = dev_domain.template("Service")
    assert resources(t, "AWS::CloudFront::Distribution") == {}
    cert = one(t, "AWS::CertificateManager::Certificate")
    assert cert["DomainName"] == "birds.example.org" and cert["ValidationMethod"] == "DNS"
    listeners = {r["Properties"]["Port"]: r["Properties"]
                 for r in resources(t, "AWS::ElasticLoadBalancingV2::Listener").values()}
    assert listeners[443]["Protocol"] == "HTTPS" and listeners[443]["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    assert listeners[443]["Certificates"]
    redirect = listeners[80]["DefaultActions"][0]
    assert redirect["Type"] == "redirect" and redirect["RedirectConfig"]["Protocol"] == "HTTPS"
    assert one(t, "AWS::Route53::RecordSet")["Name"] == "birds.example.org."


def test_waf_rate_limits_each_client_on_the_alb(dev, dev_domain):
    for synth, key in ((dev, "FORWARDED_IP"), (dev_domain, "IP")):
        t = synth.template("Service")
        acl = one(t, "AWS::WAFv2::WebACL")
        assert acl["Scope"] == "REGIONAL"
        rate = acl["Rules"][0]["Statement"]["RateBasedStatement"]
        assert rate["Limit"] == 300 and rate["AggregateKeyType"] == key
        assert acl["Rules"][0]["Action"] == {"Block": {}}
        lb = next(iter(resources(t, "AWS::ElasticLoadBalancingV2::LoadBalancer")))
        assert one(t, "AWS::WAFv2::WebACLAssociation")["ResourceArn"] == {"Ref": lb}


def test_alarms_on_5xx_latency_unhealthy_hosts_and_a_dashboard(dev):
    t = dev.template("Service")
    alarms = [a["Properties"] for a in resources(t, "AWS::CloudWatch::Alarm").values()]
    text = json.dumps(alarms)
    for metric in ("HTTPCode_ELB_5XX_Count", "HTTPCode_Target_5XX_Count", "TargetResponseTime", "UnHealthyHostCount"):
        assert metric in text, metric
    assert len(alarms) == 3 and all(a["AlarmActions"] for a in alarms)
    assert one(t, "AWS::CloudWatch::Dashboard")["DashboardName"] == "attngan-dev"


def test_cpu_option_drops_the_gpu(dev_cpu):
    t = dev_cpu.template("Service")
    lt = one(t, "AWS::EC2::LaunchTemplate")["LaunchTemplateData"]
    assert lt["InstanceType"] == "c7i.2xlarge"
    (c,) = one(t, "AWS::ECS::TaskDefinition")["ContainerDefinitions"]
    assert "ResourceRequirements" not in c
    env = {e["Name"]: e["Value"] for e in c["Environment"]}
    assert env["DEVICE"] == "cpu" and env["CANDIDATES"] == "1"  # best of N is off unless configured
    assert env["TRUNCATION"] == "1.0"  # the paper's sampling unless configured


# --- training ------------------------------------------------------------------------------------------

def test_state_machine_trains_on_spot_then_records_model_and_rolls_out(dev):
    t = dev.template("Training")
    text = _definition(t)
    for needle in ("sagemaker:createTrainingJob.sync", '"EnableManagedSpotTraining":true',
                   '"LocalPath":"/opt/ml/checkpoints"', '"ChannelName":"train"',
                   "s3://attngan-dev-123456789012-us-east-1/models/", "States.Format('s3://attngan-dev-",
                   "aws-sdk:ssm:putParameter", "/attngan/dev/model-uri", "aws-sdk:ecs:updateService",
                   '"ForceNewDeployment":true', '"HyperParameters.$":"$.hyperparameters"',
                   f"attngan-dev-trainer:{TAG}"):
        assert needle in text, needle
    sm = one(t, "AWS::StepFunctions::StateMachine")
    assert sm["TracingConfiguration"] == {"Enabled": True} and sm["LoggingConfiguration"]["Level"] == "ALL"


def test_training_roles_are_scoped(dev):
    t = dev.template("Training")
    roles = [r["Properties"] for r in resources(t, "AWS::IAM::Role").values()]
    principals = json.dumps([r["AssumeRolePolicyDocument"] for r in roles])
    assert "sagemaker.amazonaws.com" in principals and "states.amazonaws.com" in principals
    text = json.dumps([p["Properties"]["PolicyDocument"] for p in resources(t, "AWS::IAM::Policy").values()])
    assert "training-job/attngan-dev-*" in text and "iam:PassedToService" in text
    for policy in resources(t, "AWS::IAM::Policy").values():
        for s in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
            if any(a.startswith(("sagemaker:", "s3:", "ssm:", "ecs:")) for a in actions):
                assert s["Resource"] != "*", s


# --- CI --------------------------------------------------------------------------------------------------

def test_github_oidc_role_trusts_only_the_repository_environment(dev, prod):
    t = dev.template("CI")
    one(t, "AWS::IAM::OIDCProvider")
    role = one(t, "AWS::IAM::Role")
    cond = role["AssumeRolePolicyDocument"]["Statement"][0]["Condition"]
    assert cond["StringEquals"]["token.actions.githubusercontent.com:sub"] == \
        "repo:attngan-aws/attngan-aws:environment:dev"
    assert cond["StringEquals"]["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
    text = json.dumps(one(t, "AWS::IAM::Policy")["PolicyDocument"])
    assert "role/cdk-hnb659fds-*" in text and "states:StartExecution" in text
    # prod imports the account's one provider instead of creating a second
    assert resources(prod.template("CI"), "AWS::IAM::OIDCProvider") == {}


def test_every_environment_has_five_stacks_named_by_part(dev, prod):
    for synth, title in ((dev, "Dev"), (prod, "Prod")):
        names = sorted(s.stack_name for s in synth.assembly.stacks)
        assert names == sorted(f"AttnGAN-{title}-{p}" for p in ("CI", "Network", "Service", "Storage", "Training"))
