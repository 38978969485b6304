//! Region catalog, network graph, cost model, two-level placement (issue #3).
