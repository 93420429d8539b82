"""SIGHUP applies the gateway's ``limits:`` to the IKE_SA_INIT and IKE_AUTH that come
next (the endpoint reads them from its responder policy at every request)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from servicehelp import edited

from gateway.config import parse_config
from gateway.service import GatewayService
from mpa_ike.ike_config import AdmissionLimits


def test_reload_applies_limits(gateway_data: dict[str, Any], short_dir: Path) -> None:
    service = GatewayService(parse_config(gateway_data, short_dir))
    try:
        limits = {"half_open_limit": 5, "init_rate": 0, "ike_sas_per_identity": 1}
        new = parse_config(edited(gateway_data, "limits", limits), short_dir)
        assert service.reload(new)
        responder = service.endpoint.responder
        assert responder is not None
        assert responder.limits == AdmissionLimits(
            half_open_limit=5, init_rate=0, ike_sas_per_identity=1
        )
    finally:
        service.close()
