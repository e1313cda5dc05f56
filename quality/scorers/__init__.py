"""Per-record scorers: the rules the stages apply to each segment or passage and the audit
reads back (text filters, Whisper hallucination rules, language identification, DNSMOS, the
rephrasing guards). The phrase lists they read are data, in `quality/data/`."""
