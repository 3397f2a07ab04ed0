"""Batches across images and devices, directory encoding, shards across processes."""
