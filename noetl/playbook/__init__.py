"""Playbooks: the YAML document (`document`), its steps as typed models (`steps`, built by
`parse`), and the workflow graph (`workflow`)."""
