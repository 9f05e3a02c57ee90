"""Package spatia.v1: the world service (world.proto) and its generated modules."""
