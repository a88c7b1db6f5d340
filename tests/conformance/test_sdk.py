"""Conformance: the official Tencent Cloud Python SDK as a client of our emulator.

The emulator binary is started here on free loopback ports (EMULATOR_BIN, default
target/debug/tencent-vpc-emulator) with the lab scenario. Each test asserts what the SDK
observes: documented success shapes, documented error codes, and refused bad signatures.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.cvm.v20170312 import cvm_client
from tencentcloud.cvm.v20170312 import models as cvm_models
from tencentcloud.vpc.v20170312 import models, vpc_client

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "crates/tencent-vpc-emulator/scenarios/lab.json"
SECRET_ID = "AKIDlab0000000000000000000000000000"
SECRET_KEY = "lab-secret-key-0000000000000000"


@pytest.fixture()
def emulator():
    binary = os.environ.get("EMULATOR_BIN", str(ROOT / "target/debug/tencent-vpc-emulator"))
    proc = subprocess.Popen(
        [binary, "--scenario", str(SCENARIO), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line, "the emulator printed its addresses"
        yield json.loads(line)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def profile(addr):
    return ClientProfile(httpProfile=HttpProfile(protocol="http", endpoint=addr, reqTimeout=10))


def vpc(addr, key=SECRET_KEY, secret_id=SECRET_ID, token=None):
    return vpc_client.VpcClient(credential.Credential(secret_id, key, token), "ap-guangzhou", profile(addr))


def request(model, **fields):
    m = model()
    m.from_json_string(json.dumps(fields))
    return m


def error_code(fn):
    with pytest.raises(TencentCloudSDKException) as e:
        fn()
    assert e.value.get_request_id(), "every error carries a RequestId"
    return e.value.get_code()


def cvm_route(dest, gw):
    return {"DestinationCidrBlock": dest, "GatewayType": "NORMAL_CVM", "GatewayId": gw, "RouteDescription": "flannel-rs"}


def test_describe_route_tables_pages_and_filters(emulator):
    c = vpc(emulator["api"])
    r = c.DescribeRouteTables(request(models.DescribeRouteTablesRequest, Filters=[{"Name": "vpc-id", "Values": ["vpc-lab"]}], Offset="0", Limit="1"))
    assert r.TotalCount == 2
    assert len(r.RouteTableSet) == 1
    main = r.RouteTableSet[0]
    assert main.RouteTableId == "rtb-main" and main.Main is True
    assert [a.SubnetId for a in main.AssociationSet] == ["subnet-a"]
    assert main.RouteSet[0].GatewayType == "VPN"
    r = c.DescribeRouteTables(request(models.DescribeRouteTablesRequest, Offset="1", Limit="1"))
    assert r.RouteTableSet[0].RouteTableId == "rtb-b"


def test_create_replace_delete(emulator):
    c = vpc(emulator["api"])
    r = c.CreateRoutes(request(models.CreateRoutesRequest, RouteTableId="rtb-main", Routes=[cvm_route("10.244.1.0/24", "172.16.1.7")]))
    created = r.RouteTableSet[0].RouteSet[0]
    assert created.RouteType == "USER" and created.Enabled is True and created.RouteId > 0
    assert created.RouteItemId.startswith("rti-")
    r = c.ReplaceRoutes(request(models.ReplaceRoutesRequest, RouteTableId="rtb-main", Routes=[dict(cvm_route("10.244.1.0/24", "172.16.1.8"), RouteId=created.RouteId)]))
    assert r.OldRouteSet[0].GatewayId == "172.16.1.7"
    assert r.NewRouteSet[0].GatewayId == "172.16.1.8"
    r = c.DeleteRoutes(request(models.DeleteRoutesRequest, RouteTableId="rtb-main", Routes=[{"RouteId": created.RouteId}]))
    assert r.RouteSet[0].RouteId == created.RouteId
    assert error_code(lambda: c.DeleteRoutes(request(models.DeleteRoutesRequest, RouteTableId="rtb-main", Routes=[{"RouteId": created.RouteId}]))) == "ResourceNotFound"


def test_documented_errors(emulator):
    c = vpc(emulator["api"])
    create = lambda routes, table="rtb-main": c.CreateRoutes(request(models.CreateRoutesRequest, RouteTableId=table, Routes=routes))
    create([cvm_route("10.244.1.0/24", "172.16.1.7")])
    assert error_code(lambda: create([cvm_route("10.244.1.0/24", "172.16.1.7")])) == "InvalidParameterValue.Duplicate"
    assert error_code(lambda: create([cvm_route("172.16.200.0/24", "172.16.1.7")])) == "InvalidParameterValue.VpcCidrConflict"
    assert error_code(lambda: create([cvm_route("10.244.2.0/24", "172.16.9.9")])) == "InvalidParameterValue.RouteNextHopInvalid"
    assert error_code(lambda: create([cvm_route("10.244.2.0/24", "172.16.1.7")], table="rtb-missing")) == "ResourceNotFound"
    assert error_code(lambda: c.ReplaceRoutes(request(models.ReplaceRoutesRequest, RouteTableId="rtb-main", Routes=[dict(cvm_route("10.244.1.0/24", "172.16.1.8"), RouteId=999999)]))) == "UnsupportedOperation.RecordNotExists"
    assert error_code(lambda: c.DescribeRouteTables(request(models.DescribeRouteTablesRequest, RouteTableIds=["rtb-b"], Filters=[{"Name": "vpc-id", "Values": ["vpc-lab"]}]))) == "InvalidParameter.Coexist"


def test_route_quota_is_enforced_all_or_nothing(emulator):
    c = vpc(emulator["api"])
    # 50 per table; the main table has one VPN route already.
    routes = [cvm_route(f"10.245.{i}.0/24", "172.16.1.7") for i in range(49)]
    c.CreateRoutes(request(models.CreateRoutesRequest, RouteTableId="rtb-main", Routes=routes))
    assert error_code(lambda: c.CreateRoutes(request(models.CreateRoutesRequest, RouteTableId="rtb-main", Routes=[cvm_route("10.246.0.0/24", "172.16.1.7")]))) == "LimitExceeded"
    r = c.DescribeRouteTables(request(models.DescribeRouteTablesRequest, RouteTableIds=["rtb-main"]))
    assert len(r.RouteTableSet[0].RouteSet) == 50


def test_describe_subnets_and_instances(emulator):
    r = vpc(emulator["api"]).DescribeSubnets(request(models.DescribeSubnetsRequest, Filters=[{"Name": "vpc-id", "Values": ["vpc-lab"]}], Offset="0", Limit="100"))
    assert r.TotalCount == 2
    assert {(s.SubnetId, s.RouteTableId) for s in r.SubnetSet} == {("subnet-a", "rtb-main"), ("subnet-b", "rtb-b")}
    assert r.SubnetSet[0].CidrBlock == "172.16.1.0/24"
    c = cvm_client.CvmClient(credential.Credential(SECRET_ID, SECRET_KEY), "ap-guangzhou", profile(emulator["api"]))
    r = c.DescribeInstances(request(cvm_models.DescribeInstancesRequest, Filters=[{"Name": "private-ip-address", "Values": ["172.16.1.8"]}]))
    assert r.TotalCount == 1 and r.InstanceSet[0].InstanceId == "ins-a2"
    assert r.InstanceSet[0].VirtualPrivateCloud.VpcId == "vpc-lab"


def test_wrong_key_and_unknown_id_are_refused(emulator):
    assert error_code(lambda: vpc(emulator["api"], key="not-the-key").DescribeRouteTables(models.DescribeRouteTablesRequest())) == "AuthFailure.SignatureFailure"
    assert error_code(lambda: vpc(emulator["api"], secret_id="AKIDunknown").DescribeRouteTables(models.DescribeRouteTablesRequest())) == "AuthFailure.SecretIdNotFound"


def test_expired_temporary_credentials_are_refused(emulator):
    c = vpc(emulator["api"], secret_id="AKIDtmpExpired000000000000000000000", key="expired-key", token="expired-token")
    assert error_code(lambda: c.DescribeSubnets(models.DescribeSubnetsRequest())) == "AuthFailure.TokenFailure"


def test_describe_vpc_limits_serves_the_route_quota(emulator):
    c = vpc(emulator["api"])
    r = c.DescribeVpcLimits(request(models.DescribeVpcLimitsRequest, LimitTypes=["route-table-max-policies"]))
    assert [(l.LimitType, l.LimitValue) for l in r.VpcLimitSet] == [("route-table-max-policies", 50)]
    assert error_code(lambda: c.DescribeVpcLimits(request(models.DescribeVpcLimitsRequest, LimitTypes=["bogus"]))) == "InvalidParameterValue"


def test_describe_vpcs_with_string_paging(emulator):
    c = vpc(emulator["api"])
    r = c.DescribeVpcs(request(models.DescribeVpcsRequest, Filters=[{"Name": "vpc-id", "Values": ["vpc-lab"]}], Offset="0", Limit="20"))
    assert r.TotalCount == 1
    assert (r.VpcSet[0].VpcId, r.VpcSet[0].CidrBlock) == ("vpc-lab", "172.16.0.0/16")


@pytest.fixture()
def tls_emulator(tmp_path):
    """The emulator with its HTTPS listener, on a certificate signed by a CA made here (as
    flannel-lab makes one at `up`)."""
    ca_key, ca, key, csr, cert = (tmp_path / n for n in ("ca.key", "ca.pem", "tls.key", "tls.csr", "tls.pem"))
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=flannel-lab CA")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    ext = tmp_path / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "1", "-extfile", ext)
    binary = os.environ.get("EMULATOR_BIN", str(ROOT / "target/debug/tencent-vpc-emulator"))
    proc = subprocess.Popen(
        [binary, "--scenario", str(SCENARIO), "--listen", "127.0.0.1:0",
         "--tls-listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line, "the emulator printed its addresses"
        yield json.loads(line), str(ca)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_sdk_over_https_trusting_the_lab_ca(tls_emulator):
    addrs, ca = tls_emulator
    assert addrs["api_tls"], addrs
    https = ClientProfile(httpProfile=HttpProfile(protocol="https", endpoint=addrs["api_tls"], reqTimeout=10, certification=ca))
    c = vpc_client.VpcClient(credential.Credential(SECRET_ID, SECRET_KEY), "ap-guangzhou", https)
    r = c.DescribeRouteTables(request(models.DescribeRouteTablesRequest))
    assert r.TotalCount == 2
    r = c.CreateRoutes(request(models.CreateRoutesRequest, RouteTableId="rtb-b", Routes=[cvm_route("10.244.9.0/24", "172.16.2.7")]))
    assert r.RouteTableSet[0].RouteSet[0].DestinationCidrBlock == "10.244.9.0/24"
    # Without the lab CA the certificate is refused: TLS is really checked.
    untrusted = ClientProfile(httpProfile=HttpProfile(protocol="https", endpoint=addrs["api_tls"], reqTimeout=10))
    with pytest.raises(TencentCloudSDKException) as e:
        vpc_client.VpcClient(credential.Credential(SECRET_ID, SECRET_KEY), "ap-guangzhou", untrusted).DescribeRouteTables(request(models.DescribeRouteTablesRequest))
    assert "certificate" in str(e.value).lower() or "ssl" in str(e.value).lower(), str(e.value)
