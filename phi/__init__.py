"""PHI tokenization: deterministic AES-SIV tokens, keysets, and the per-tenant PHI modes.

Layer: above ``schemas``, below ``ingest | ledger`` (ingest tokenizes and checks,
the query API detokenizes). The tokenizer itself (:mod:`phi.tokens`,
:mod:`phi.keyset`, :mod:`phi.fields`, :mod:`phi.paths`, :mod:`phi.cli`) imports
only the standard library, ``cryptography`` and the core's error types, so the
``velora-tokenizer`` console script runs on the customer's side without the
server's stack. The server side is :mod:`phi.wrap` (keysets at rest under
``VELORA_SECRETS_KEY``) and :mod:`phi.policy` (what each mode does on the way in
and out). See ``docs/phi.md``.

This root imports nothing, so importing one module never loads the rest.
"""
