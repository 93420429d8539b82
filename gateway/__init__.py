"""mpa-gateway: the IKEv2/MOBIKE responder service around the sans-I/O core in mpa_ike.

Besides the gateway itself, this package holds the service plumbing mpa-mobile shares
(configuration parsing, control socket, daemon loop, CLI helpers) so that there is one
implementation of each.
"""
