"""stc-server: the side beside Asterisk."""
