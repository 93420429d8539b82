"""NAT detection hashes (RFC 7296 §2.23).

NAT_DETECTION_SOURCE_IP / NAT_DETECTION_DESTINATION_IP carry
SHA-1(SPIi | SPIr | IP address | port): the address in network order (4 or
16 bytes) and the port as 16 bits. In IKE_SA_INIT the request has SPIr zero.
"""

from __future__ import annotations

import hashlib
import ipaddress

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def nat_detection_hash(spi_i: bytes, spi_r: bytes, address: IpAddress | str, port: int) -> bytes:
    """The 20-byte NAT-D notification data for one address and port."""
    if len(spi_i) != 8 or len(spi_r) != 8:
        raise ValueError("IKE SPIs are 8 bytes")
    packed = ipaddress.ip_address(address).packed
    return hashlib.sha1(spi_i + spi_r + packed + port.to_bytes(2, "big")).digest()
