"""The broker side of a sealink site: a Mosquitto ACL generated from a roster (acl.py)."""
