"""The secure-aggregation server (``workbench aggregator serve``): HE sessions (:mod:`.app`) and the SMPC
mailbox (:mod:`.relay`). It holds no key that decrypts anything."""
