"""hcboot: the config node's DHCP/ProxyDHCP + TFTP + HTTP boot server and AoE tools."""

__version__ = "0.1.0"
