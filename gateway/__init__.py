"""mpa-gateway: the IKEv2/MOBIKE responder service on the node kit (:mod:`mpa_ike.node`)."""
