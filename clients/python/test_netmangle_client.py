"""The Python client against a real `netmangle serve` and a real veth pair.

test/service/python-client.test.ts starts the service and the namespaces and runs this file
with pytest (npm test does), setting:
  NETMANGLE_SOCKET     the service's socket
  NM_TEST_NETNS        the namespace of the sending end, NM_TEST_DEV its interface
  NM_TEST_PEER         the address to ping from there
"""

import os
import subprocess
import time

import pytest

from netmangle_client import Client, ServiceError

NETNS = os.environ.get("NM_TEST_NETNS")
DEV = os.environ.get("NM_TEST_DEV")
PEER = os.environ.get("NM_TEST_PEER")

if not (NETNS and DEV and PEER and os.environ.get("NETMANGLE_SOCKET")):
    pytest.fail("run through test/service/python-client.test.ts (npm test), which sets up the service and namespaces", pytrace=False)


def ping(count):
    subprocess.run(["ip", "netns", "exec", NETNS, "ping", "-q", "-c", str(count), "-i", "0.1", "-W", "1", PEER],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def names(client):
    return sorted(f["name"] for f in client.list())


def test_attach_counts_real_packets_and_with_detaches(netmangle):
    with netmangle.attach("icmp.type == 8 => drop", dev=DEV, hook="egress", netns=NETNS, name="py-drop", first=2, seed=11) as fault:
        assert fault.seed == 11
        assert names(netmangle) == ["py-drop"]
        ping(4)
        rule = fault.counters()["rules"][0]
        assert (rule["name"], rule["acted"], rule["dropped"]) == ("rule-1", 2, 2)
        assert rule["matched"] >= 4
        assert fault.update(first=None) == "atomically"
        assert fault.counters()["rules"][0]["dropped"] == 0, "the new program counts from 0"
        ping(2)
        # Every echo request is dropped now (ping retries a refused send, so maybe more than 2).
        assert fault.counters()["rules"][0]["dropped"] >= 2
    assert names(netmangle) == []


def test_errors_carry_status_message_and_column(netmangle):
    with pytest.raises(ServiceError) as bad:
        netmangle.attach(["icmp => pass", "icmp => dorp"], dev=DEV, hook="egress", netns=NETNS, name="py-bad")
    assert bad.value.status == 400
    assert bad.value.at == {"field": "rules[1]", "column": 9}
    assert 'found "dorp"' in str(bad.value)
    with pytest.raises(ServiceError) as missing:
        netmangle.get("py-none")
    assert (missing.value.status, missing.value.error) == (404, "no fault named py-none")
    with netmangle.attach("udp => pass", dev=DEV, hook="ingress", netns=NETNS, name="py-once"):
        with pytest.raises(ServiceError) as taken:
            netmangle.attach("udp => pass", dev=DEV, hook="ingress", netns=NETNS, name="py-once")
        assert taken.value.status == 409
    with pytest.raises(ServiceError) as refused:
        netmangle.attach("ip.ttl == 1 => set ip.ttl = 300", dev=DEV, hook="egress", netns=NETNS, name="py-big")
    assert (refused.value.status, refused.value.at["column"]) == (422, 29)
    with pytest.raises(ServiceError) as no_ns:
        netmangle.attach("udp => pass", dev=DEV, hook="egress", netns="nm-py-absent", name="py-ns")
    assert no_ns.value.status == 404
    assert names(netmangle) == []


def test_ttl_expires_and_renew_extends(netmangle):
    short = netmangle.attach("udp => pass", dev=DEV, hook="egress", netns=NETNS, name="py-short", ttl=1)
    kept = netmangle.attach("udp => pass", dev=DEV, hook="egress", netns=NETNS, name="py-kept", ttl="1s")
    for _ in range(4):
        time.sleep(0.4)
        kept.renew()
    assert names(netmangle) == ["py-kept"]
    short.detach()  # gone already: not an error
    assert short.detached


def test_populate_is_idempotent_and_metrics_show_it(netmangle):
    specs = [{"name": "py-p1", "rules": "udp => pass", "dev": DEV, "hook": "ingress", "netns": NETNS},
             {"name": "py-p2", "rules": "tcp => pass", "dev": DEV, "hook": "ingress", "netns": NETNS, "perConnection": True, "first": 1}]
    first = netmangle.populate(specs)
    assert first["created"] == ["py-p1", "py-p2"]
    again = netmangle.populate(specs)
    assert (again["created"], again["unchanged"]) == ([], ["py-p1", "py-p2"])
    assert [f["programs"] for f in again["faults"]] == [f["programs"] for f in first["faults"]]
    assert 'netmangle_rule_matched_total{fault="py-p2",rule="rule-1"' in netmangle.metrics()


def test_detach_all_removes_what_this_client_attached():
    with Client() as client:
        client.attach("udp => pass", dev=DEV, hook="egress", netns=NETNS, name="py-left")
        other = Client()
        assert "py-left" in names(other)
        client.detach_all()
        assert "py-left" not in names(other)


def test_no_service_is_a_clear_error(tmp_path):
    with pytest.raises(ServiceError) as err:
        Client(socket_path=str(tmp_path / "absent.sock")).version()
    assert err.value.status == 0
    assert str(err.value).startswith("no netmangle service at ")
