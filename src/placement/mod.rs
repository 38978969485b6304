//! Pure placement engine: cluster model, requests, policies (issue #2).
