"""Shared wire protocol of stc: framing, messages, identities, SIP/SDP, key agreement."""
