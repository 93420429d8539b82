"""How long a handover waits, shared by the daemon and its command line."""

from __future__ import annotations

# For the new link to come up after ``handover NAME``.
LINK_WAIT = 10.0
# For the answer to UPDATE_SA_ADDRESSES, through its retransmissions over a lossy link
# (mpa_ike.retransmit.UPDATE_RETRANSMIT).
ANSWER_WAIT = 25.0
# The command line's wait: the link, then the answer, and a margin.
HANDOVER_TIMEOUT = LINK_WAIT + ANSWER_WAIT + 5.0
