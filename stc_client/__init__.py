"""stc-client: the side beside the softphone."""
