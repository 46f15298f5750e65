"""What happens to a grant after the launch, outside a sync run: disconnect, revocation at the
EHR, webhook delivery and the purge of expired rows."""
