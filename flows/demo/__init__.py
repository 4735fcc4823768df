"""The offline demo, apart from the product's numerics: `zoo` (data sets, architectures, training,
export) and `run` (`filterdb demo`: the catalog, the DB, the analyses, the closing summary)."""
