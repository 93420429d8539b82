"""mpa-ike: IKEv2/MOBIKE pre-authentication handover agent, sans-I/O protocol core."""

__version__ = "0.1.0"
