"""``velora sidecar``: PHI tokenization in the customer's network (sidecar-mode, ``docs/phi.md``).

A reverse proxy for ``/api/v2/public/*`` that tokenizes PHI filter values on the way
to Velora and detokenizes PHI fields on the way back, and a webhook relay that
verifies Velora's signature, detokenizes and re-signs for the customer's SIEM. It
holds the customer's keyset; Velora only ever sees tokens. Composition-level: it
uses ``phi`` (tokens) and ``webhooks`` (signatures), and nothing uses it but ``cli``.
"""
