"""node/drivers."""
