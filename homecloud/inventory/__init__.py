"""The inventory store: one narrow protocol (``protocol.py``), the YAML file as its first backend
(``yamlfile.py``), the YAML form (``schema.py``).  A later etcd backend passes the same
contract tests (tests/unit/test_inventory_contract.py)."""
