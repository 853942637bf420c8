"""stc-pki: a demo certificate authority for stc."""
