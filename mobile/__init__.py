"""mpa-mobile: the mobile node's IKEv2/MOBIKE initiator daemon and its command line."""
