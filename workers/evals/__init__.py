"""`delegate eval`: the shipped intake and verify suites, run through the real intake engine and
verifier on chosen model routes, scored, reported, and gated by thresholds (docs/EVALS.md)."""
