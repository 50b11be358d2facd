"""Network namespaces joined by veth pairs and bridges, with tc impairments (pyroute2).

Rule: importing this package does not import pyroute2 (0.2-0.3 s); the first link does.

    from pytest_isolate.runtime.network import VethPair, Network
    with VethPair() as pair:                    # namespaces a and b, eth0 on both sides
        pair.impair(delay="50ms", loss=0.05)    # netem on both ends
        with pair.a:                            # this thread enters a: sockets made here live there
            server = socket.create_server((pair.a.ip, 0))
"""

from .bridge import Network
from .capture import Capture, Packet, read_pcap
from .endpoint import Endpoint
from .faults import Flap
from .hostlink import HostLink
from .impairment import Impairment
from .leases import DEFAULT_POOL, DEFAULT_POOL6, Subnet, set_pool, set_pool6
from .netns import NetNamespace, Pod
from .topology import VethPair, probe_netem

__all__ = [
    "DEFAULT_POOL",
    "DEFAULT_POOL6",
    "Capture",
    "Endpoint",
    "Flap",
    "HostLink",
    "Impairment",
    "NetNamespace",
    "Network",
    "Packet",
    "Pod",
    "Subnet",
    "VethPair",
    "probe_netem",
    "read_pcap",
    "set_pool",
    "set_pool6",
]

