"""mpa-mobile: the IKEv2/MOBIKE initiator daemon and CLI of the mobile node; mpa-bench."""
